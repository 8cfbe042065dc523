"""xl.cfg parsing: xl's grammar (Xen's tools/libs/util/libxlu_cfg_l.l and libxlu_cfg_y.y, xl.cfg(5)
"Syntax"), the keys xenrr knows, and one-line errors naming file:line."""
from pathlib import Path

import pytest

from host.xlcfg import ConfigError, load_config, parse_config, parse_cpus, parse_settings

BASE = Path("/guests")


def config(text: str):
    return parse_config(text, "dom.cfg", BASE)


def test_xl_grammar_settings_quotes_numbers_lists_comments():
    settings = parse_settings(
        "# a comment line\n"
        "name = \"web\" ; memory = 0x20   # trailing comment\n"
        "extra='console=hvc0 \\'quoted\\''\n"
        "\n"
        "cpus = [ \"0-1\",\n"
        "         '1', ]\n"
        "vcpus=1;\n", "f.cfg")
    assert settings["name"] == ("web", 2)
    assert settings["memory"] == ("0x20", 2)          # a number atom stays text until its key converts it
    assert settings["extra"][0] == "console=hvc0 'quoted'"
    assert settings["cpus"] == (["0-1", "1"], 5)       # newlines inside a list, one trailing comma
    assert settings["vcpus"] == ("1", 7)


def test_escapes_as_libxlu_dequote():
    settings = parse_settings(r'''a = "t\tn\nq\"s\\x\x41o\101"''', "f")
    assert settings["a"][0] == 't\tn\nq"s\\xAoA'


def test_last_setting_wins_and_plus_equals_appends():
    settings = parse_settings('extra = "a"\nextra += " b"\ncpus = ["0"]\ncpus += ["1"]\nmemory = 8\nmemory = 9\n', "f")
    assert settings["extra"][0] == "a b"
    assert settings["cpus"][0] == ["0", "1"]
    assert settings["memory"][0] == "9"


def test_full_config_with_defaults_and_conversions():
    parsed = config('name = "w1"\nkernel = "kbdshell/kbdshell"\nmemory = 0x20\ncpu_weight = 512\ncap = 50\n'
                    'cpus = "0-3,^1"\ncmdline = "quiet"\non_crash = "preserve"\n')
    assert parsed.name == "w1" and parsed.kernel == BASE / "kbdshell/kbdshell"
    assert parsed.memory_mib == 32 and parsed.weight == 512 and parsed.cap == 50
    assert parsed.cpus == (frozenset({0, 2, 3}),)
    assert parsed.cmdline == "quiet" and parsed.on_crash == "preserve" and parsed.on_poweroff == "destroy"
    default = config('name="d"\nkernel="/k"\n')
    assert (default.weight, default.cap, default.memory_mib, default.cpus) == (256, 0, 16, (None,))
    assert config('name="d"\nkernel="/k"\nextra="x"').cmdline == "x"     # no final newline needed


def test_cap_is_bounded_by_100_per_vcpu_as_libxl_bounds_it():
    """libxl's sched_credit_domain_set (tools/libs/light/libxl_sched.c), which xl applies to xl.cfg's cap
    at creation and to `xl sched-credit -c`, refuses a cap outside 0 .. (max_vcpu_id + 1) * 100 ("Cpu cap
    out of range, valid range is from 0 to %d for specified number of vcpus"); Xen's credit.c itself
    stores any 16-bit cap. The bound follows vCPUs, not the host's pCPUs."""
    assert config('name="d"\nkernel="/k"\ncap = 100\n').cap == 100
    assert config('name="d"\nkernel="/k"\nvcpus = 3\ncap = 300\n').cap == 300
    for vcpus in (1, 2, 32):
        with pytest.raises(ConfigError, match=f"between 0 and {100 * vcpus} for {vcpus} vCPU"):
            config(f'name="d"\nkernel="/k"\nvcpus = {vcpus}\ncap = {100 * vcpus + 1}\n')


@pytest.mark.parametrize("text, expected", [
    ("all", None), ("1", {1}), ("0-1", {0, 1}), ("0,2-3", {0, 2, 3}), ("0-3,^1-2", {0, 3}), (" 2 , 3 ", {2, 3})])
def test_cpus_syntax_of_xl_cfg(text, expected):
    assert parse_cpus(text) == (None if expected is None else frozenset(expected))


def test_cpus_list_is_per_vcpu():
    assert config('name="d"\nkernel="/k"\ncpus = ["1"]\n').cpus == (frozenset({1}),)


@pytest.mark.parametrize("text, message", [
    ('name = "d"\nkernel = "/k"\nbogus = 1\n', "dom.cfg:3: unknown key 'bogus'"),
    ('name = "d"\nkernel = "/k"\nmemory = "lots"\n', "dom.cfg:3: memory: 'lots' is not a number"),
    ('name = "d"\nkernel = "/k"\nmemory = 0\n', "dom.cfg:3: memory must be between 1 and 4096 MiB, not 0"),
    ('name = "d"\nkernel = "/k"\ncpu_weight = 70000\n', "dom.cfg:3: cpu_weight must be between 1 and 65535"),
    ('name = "d"\nkernel = "/k"\ncpus = "1-0"\n', "dom.cfg:3: cpus: '1-0': the range ends before it starts"),
    ('name = "d"\nkernel = "/k"\ncpus = "0,^0"\n', "dom.cfg:3: cpus: '0,^0' leaves no CPU"),
    ('name = "d"\nkernel = "/k"\non_crash = "coredump-destroy"\n', "dom.cfg:3: on_crash = 'coredump-destroy' is an xl action"),
    ('name = "d"\nkernel = "/k"\non_poweroff = "explode"\n', "dom.cfg:3: on_poweroff must be one of destroy, restart, preserve"),
    ('name = "d"\nkernel = "/k"\nvcpus = 33\n', "dom.cfg:3: vcpus must be between 1 and 32, not 33"),
    ('name = "d"\nkernel = "/k"\ncap = 101\n', "dom.cfg:3: cap must be between 0 and 100 for 1 vCPU(s) (100 per vCPU), "
                                                 "not 101"),
    ('name = "d"\nkernel = "/k"\nvcpus = 2\ncap = 201\n', "dom.cfg:4: cap must be between 0 and 200 for 2 vCPU(s)"),
    ('name = "d"\nkernel = "/k"\nname = ["a"]\n', "dom.cfg:3: name must be a single value, not a list"),
    ('kernel = "/k"\n', "dom.cfg: no name = ... setting"),
    ('name = "d"\n\nkernel = "/k\n', "dom.cfg:3: config parsing error near `\"/k': syntax error"),
    ('name = "d" kernel = "/k"\n', "dom.cfg:1: config parsing error near `kernel': syntax error"),
    ('name = "d"\nkernel = "/k"\ncpus = [ "0"\n', "dom.cfg:4: config parsing error near end of file"),
    ('name = "d"\nName = "x"\n', "dom.cfg:2: config parsing error near `Name"),
    ('name = "a\\qb"\n', "dom.cfg:1: config parsing error near `\"a\\qb\"': invalid escape sequence \\q"),
    ('name = "d"\nextra = "a"\nextra += ["b"]\n', "dom.cfg:3: config parsing error near `+=': += on extra mixes"),
])
def test_malformed_configs_are_refused_in_one_line_naming_file_and_line(text, message):
    with pytest.raises(ConfigError) as caught:
        config(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_load_config_reads_a_file_and_reports_unreadable_ones(tmp_path):
    path = tmp_path / "a.cfg"
    path.write_text('name = "a"\nkernel = "k"\n')
    assert load_config(path, base=tmp_path).kernel == tmp_path / "k"
    with pytest.raises(ConfigError, match="cannot read .*missing.cfg: No such file"):
        load_config(tmp_path / "missing.cfg")
