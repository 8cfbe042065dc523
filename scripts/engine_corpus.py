"""Generate the instruction corpus of the engine conformance suite (tests/engine/asm/*.cases).

Owns: the list of instruction cases the differential and JIT-vs-interpreter tests run, one file per
group. Invariant: the output is a pure function of this script (sorted, stable), so a regenerated
corpus only differs where the tables below changed. Run `python scripts/engine_corpus.py` and
commit the result.

Case file format, one case per line: `FLAGS | asm; asm; ...`. FLAGS lists the rflags bits that are
architecturally defined after the snippet (C P A Z S O D; `-` for none) - only those are compared.
A flag the snippet leaves unchanged is defined (it keeps its initial value). Register conventions
(set up by tests/engine/machine.py): %rbx points at 16-aligned scratch data holding float and
integer edge values, %rsi and %rdi point into scratch memory with room for string operations,
%rcx holds a small count, %rsp points into a private stack; every other GPR and XMM is random.
"""
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / 'tests' / 'engine' / 'asm'

SIZES = {  # suffix: (dst register, src register, accumulator)
    'b': ('%r8b', '%r9b', '%al'),
    'w': ('%r8w', '%r9w', '%ax'),
    'l': ('%r8d', '%r9d', '%eax'),
    'q': ('%r8', '%r9', '%rax'),
}
CONDITIONS = ['o', 'no', 'b', 'ae', 'e', 'ne', 'be', 'a', 's', 'ns', 'p', 'np', 'l', 'ge', 'le', 'g']
ALL = 'CPAZSO'


def integer() -> list[tuple[str, str]]:
    cases = []
    for op in ['add', 'adc', 'sub', 'sbb', 'and', 'or', 'xor', 'cmp']:
        flags = 'CPZSO' if op in ('and', 'or', 'xor') else ALL
        for s, (d, r, a) in SIZES.items():
            imm = '$-3' if s == 'b' else '$0x7f' if s == 'w' else '$-0x12345'
            cases += [
                (flags, f'{op}{s} {r},{d}'),
                (flags, f'{op}{s} {imm},{d}'),
                (flags, f'{op}{s} $1,{a}'),
                (flags, f'{op}{s} 8(%rbx),{d}'),
                (flags, f'{op}{s} {r},16(%rbx)'),
            ]
        cases += [(flags, f'{op}b %ah,%dl'), (flags, f'{op}q $-1,%r10'), (flags, f'{op}l %r10d,%r10d')]
    for s, (d, r, a) in SIZES.items():
        cases += [('CPZSO', f'test{s} {r},{d}'), ('CPZSO', f'test{s} $0x41,{a}')]
        for op, flags in [('inc', 'CPAZSO'), ('dec', 'CPAZSO'), ('neg', ALL), ('not', ALL)]:
            cases += [(flags, f'{op}{s} {d}'), (flags, f'{op}{s} 24(%rbx)')]
    cases += [('CPAZSO', 'movq $-1,%r8; incq %r8'), ('CPAZSO', 'movl $0x7fffffff,%r8d; incl %r8d'),
              ('CPAZSO', 'movq $0x8000000000000000,%r8; negq %r8'), ('CPAZSO', 'xorl %r8d,%r8d; negq %r8'),
              ('CPAZSO', 'movb $0x0f,%r8b; addb $1,%r8b'), ('CPAZSO', 'movb $0x10,%r8b; subb $1,%r8b')]
    # multiply and divide; divisors are forced non-zero and quotients into range
    for s, (d, r, a) in SIZES.items():
        cases += [('CO', f'mul{s} {d}'), ('CO', f'imul{s} {d}'), ('CO', f'mul{s} 8(%rbx)')]
        if s != 'b':
            cases += [('CO', f'imul{s} {r},{d}'), ('CO', f'imul{s} $-7,{r},{d}'), ('CO', f'imul{s} $300,8(%rbx),{d}')]
    for s, (d, r, a) in SIZES.items():
        divisor, high = ('%dl', '%ah') if s == 'b' else (d, {'w': '%dx', 'l': '%edx', 'q': '%rdx'}[s])
        sign = {'b': 'cbtw', 'w': 'cwtd', 'l': 'cltd', 'q': 'cqto'}[s]
        cases += [
            ('-', f'or{s} $1,{divisor}; xor{s} {high},{high}; div{s} {divisor}'),
            ('-', f'or{s} $1,{divisor}; mov{s} {divisor},{high}; shr{s} $1,{high}; div{s} {divisor}'),
            ('-', f'and{s} $-2,{divisor}; or{s} $2,{divisor}; {sign}; idiv{s} {divisor}'),
        ]
    cases += [('-', 'orq $1,8(%rbx); xorl %edx,%edx; divq 8(%rbx)'), ('-', 'movq $2,%r8; movq $-7,%rax; cqto; idivq %r8'),
              ('-', 'movq $-3,%r8; movq $100,%rax; cqto; idivq %r8')]
    # bit operations
    for s in 'wlq':
        d, r, _ = SIZES[s]
        for op in ['bt', 'bts', 'btr', 'btc']:
            cases += [('C', f'{op}{s} {r},{d}'), ('C', f'{op}{s} $13,{d}'), ('C', f'{op}{s} $5,8(%rbx)'),
                      ('C', f'{op}{s} %cx,(%rbx)' if s == 'w' else f'{op}{s} {"%ecx" if s == "l" else "%rcx"},(%rbx)')]
        cases += [('Z', f'bsf{s} {r},{d}'), ('Z', f'bsr{s} {r},{d}'), ('Z', f'bsf{s} 8(%rbx),{d}'), ('Z', f'bsr{s} 8(%rbx),{d}'),
                  ('CZ', f'tzcnt{s} {r},{d}'), ('CZ', f'rep bsf{s} {r},{d}'), ('CZ', f'lzcnt{s} {r},{d}'),
                  (ALL, f'popcnt{s} {r},{d}'), ('CZ', f'tzcnt{s} 8(%rbx),{d}')]
    cases += [('Z', 'movq $0x40,%r9; bsfq %r9,%r8'), ('Z', 'movq $0x40,%r9; bsrq %r9,%r8'),
              ('Z', 'movl $0x80000000,%r9d; bsrl %r9d,%r8d'), ('CZ', 'xorl %r9d,%r9d; tzcntq %r9,%r8'),
              ('-', 'bswapq %r8'), ('-', 'bswapl %r8d'), ('-', 'bswapl %eax')]
    for cc in CONDITIONS:
        cases += [(ALL, f'set{cc} %r8b'), (ALL, f'set{cc} 3(%rbx)'), (ALL, f'cmov{cc}q %r9,%r8'),
                  (ALL, f'cmov{cc}l %r9d,%r8d'), (ALL, f'cmov{cc}w 8(%rbx),%r8w')]
    # data movement
    cases += [(ALL, x) for x in [
        'movsbq %r9b,%r8', 'movswq %r9w,%r8', 'movslq %r9d,%r8', 'movzbl %r9b,%r8d', 'movzwl %r9w,%r8d',
        'movzbq 8(%rbx),%r8', 'movsbl %ah,%ecx', 'movzwq 8(%rbx),%r8', 'movl %r9d,%r8d', 'movw %r9w,%r8w',
        'movb %r9b,%r8b', 'movb %ah,%dl', 'movq $-5,%r8', 'movl $-5,%r8d', 'movabsq $0x1122334455667788,%r8',
        'movq %r9,8(%rbx)', 'movl %r9d,8(%rbx)', 'movw $0x1234,8(%rbx)', 'movb $7,9(%rbx)',
        'xchgq %r9,%r8', 'xchgl %r9d,%r8d', 'xchgw %r9w,%r8w', 'xchgb %ah,%al', 'xchgq %r8,8(%rbx)', 'xchgl %eax,%r8d',
        'cbtw', 'cwtl', 'cltq', 'cwtd', 'cltd', 'cqto',
        'leaq 0x7f(%r8,%r9,8),%r10', 'leal -3(%r8,%r9,2),%r10d', 'leaw 1(%r8),%r10w', 'leaq 1f(%rip),%r10; 1:',
        'movnti %r8,8(%rbx)', 'movntil %r8d,8(%rbx)', 'nop', 'nopw 0x0(%rax,%rax,1)', 'pause',
        'lfence', 'sfence', 'mfence', 'prefetcht0 (%rbx)', 'prefetchnta 8(%rbx)', 'clflush 8(%rbx)', 'endbr64',
        'movq %r8,%fs:8', 'movq %fs:16,%r8',
    ]]
    for op in ['xadd', 'cmpxchg']:
        for s, (d, r, a) in SIZES.items():
            cases += [(ALL, f'{op}{s} {r},{d}'), (ALL, f'{op}{s} {r},8(%rbx)'), (ALL, f'lock {op}{s} {r},8(%rbx)')]
    cases += [(ALL, 'movq 8(%rbx),%rax; lock cmpxchgq %r9,8(%rbx)'), (ALL, 'movl 8(%rbx),%eax; cmpxchgl %r9d,8(%rbx)'),
              (ALL, 'movq %r8,%rax; cmpxchgq %r9,%r8'), (ALL, 'movl %r8d,%eax; cmpxchgl %r9d,%r8d'),
              (ALL, 'cmpxchg8b 8(%rbx)'), (ALL, 'lock cmpxchg8b 8(%rbx)'),
              (ALL, 'movl 8(%rbx),%eax; movl 12(%rbx),%edx; lock cmpxchg8b 8(%rbx)'),
              (ALL, 'cmpxchg16b 16(%rbx)'), (ALL, 'lock cmpxchg16b 16(%rbx)'),
              (ALL, 'movq 16(%rbx),%rax; movq 24(%rbx),%rdx; lock cmpxchg16b 16(%rbx)'),
              (ALL, 'lock addq %r9,8(%rbx)'), (ALL, 'lock incl 8(%rbx)'), ('C', 'lock btsq $3,8(%rbx)'),
              ('CPZSO', 'lock orb %r9b,8(%rbx)'), (ALL, 'lock decw 8(%rbx)')]
    return cases


def shifts() -> list[tuple[str, str]]:
    cases = []
    for op in ['shl', 'shr', 'sar', 'sal', 'rol', 'ror', 'rcl', 'rcr']:
        rotate = op in ('rol', 'ror', 'rcl', 'rcr')
        one = 'CPAZSO' if rotate else 'CPZSO'        # rotates leave S Z A P alone
        many = 'CPAZS' if rotate else 'CPZS'         # OF is undefined for counts other than 1
        for s, (d, r, a) in SIZES.items():
            cases += [(one, f'{op}{s} {d}'), (one, f'{op}{s} $1,{d}'), (many, f'{op}{s} $3,{d}'),
                      (many, f'{op}{s} $7,16(%rbx)'), (many, f'{op}{s} %cl,{d}'), (one, f'{op}{s} 16(%rbx)')]
            width = {'b': 8, 'w': 16, 'l': 32, 'q': 64}[s]
            cases += [(many, f'{op}{s} ${width - 1},{d}'), (ALL, f'{op}{s} $0,{d}')]
            if s in 'bw':   # counts beyond the operand width (rotate-through-carry wraps modulo width+1)
                cases += [(many, f'{op}{s} ${width + 3},{d}')]
    for op in ['shld', 'shrd']:
        for s in 'wlq':
            d, r, _ = SIZES[s]
            cases += [('CPZSO', f'{op}{s} $1,{r},{d}'), ('CPZS', f'{op}{s} $5,{r},{d}'),
                      ('CPZS', f'{op}{s} $5,{r},8(%rbx)')]
            if s != 'w':   # 16-bit counts above 16 are undefined
                cases += [('CPZS', f'{op}{s} %cl,{r},{d}')]
    return cases


def strings() -> list[tuple[str, str]]:
    cases = []
    for s in 'bwlq':
        cases += [('-', f'movs{s}'), ('-', f'stos{s}'), ('-', f'lods{s}'), (ALL, f'cmps{s}'), (ALL, f'scas{s}'),
                  ('-', f'rep movs{s}'), ('-', f'rep stos{s}'), (ALL, f'repe cmps{s}'), (ALL, f'repne cmps{s}'),
                  (ALL, f'repe scas{s}'), (ALL, f'repne scas{s}'), ('-', f'rep lods{s}'),
                  ('D', f'std; rep movs{s}; cld'), ('D', f'std; stos{s}; cld'), ('D', f'std; lods{s}; cld'),
                  ('CPAZSOD', f'std; repe cmps{s}; cld'), ('CPAZSOD', f'std; repne scas{s}; cld')]
    cases += [('-', 'xorl %ecx,%ecx; rep movsb'), ('CPZSO', 'xorl %ecx,%ecx; repe cmpsb'), ('CPZSO', 'xorl %ecx,%ecx; repne scasq'),
              ('-', 'movl $3,%ecx; rep movsq'), ('-', 'movq %rsi,%rdi; rep movsb'), (ALL, 'movq %rsi,%rdi; repe cmpsq'),
              ('-', 'movl $0x41414141,%eax; rep stosl'), (ALL, 'movb (%rdi),%al; repne scasb')]
    return cases


def stack_and_flow() -> list[tuple[str, str]]:
    cases = [(ALL, x) for x in [
        'pushq %r8; popq %r9', 'pushq $-5; popq %r9', 'pushq $0x1234; popq 8(%rbx)', 'pushq 8(%rbx); popq %r9',
        'pushw %r8w; popw %r9w', 'pushq %r8; pushq %r9; popq %r8; popq %r9', 'pushfq; popq %r8', 'pushfw; popw %r8w',
        'movq %rsp,%rbp; pushq %r8; leave', 'enter $32,$0; leave', 'enter $16,$1; movq %rbp,%r8; leave',
        'pushq %rsp; popq %r8', 'popq %r8; pushq %r8', 'leaq -8(%rsp),%rsp; movq %r8,(%rsp); popq %r9',
        'call 1f; jmp 2f; 1: movq (%rsp),%r8; ret; 2:', 'call 1f; 1: popq %r8',
        'pushq $7; call 1f; jmp 2f; 1: ret $8; 2:', 'leaq 1f(%rip),%r8; call *%r8; jmp 2f; 1: ret; 2:',
        'leaq 1f(%rip),%r8; movq %r8,8(%rbx); call *8(%rbx); jmp 2f; 1: ret; 2:',
        'leaq 1f(%rip),%r8; jmp *%r8; movq $1,%r9; 1:', 'leaq 1f(%rip),%r8; movq %r8,8(%rbx); jmp *8(%rbx); ud2; 1:',
        'jmp 1f; movq $1,%r9; 1:', 'jmp 1f; .fill 200,1,0x90; 1: movq $2,%r9',
        'lahf', 'sahf', 'clc', 'stc', 'cmc', 'cld', 'stc; cmc; lahf',
    ]]
    # TF stays clear: the single-step trap is not emulated (docs/engine.md)
    cases += [('CPAZSOD', 'pushq %r8; andq $-0x101,(%rsp); popfq'), ('CPAZSOD', 'movq $0xeff,%r8; pushq %r8; popfq'),
              ('CPAZSOD', 'pushq $0; popfq'), ('CPAZSOD', 'std; pushfq; popq %r8; cld'), ('CPAZSOD', 'std; cld')]
    for cc in CONDITIONS:
        cases += [(ALL, f'j{cc} 1f; movq $1,%r8; 1:'), (ALL, f'j{cc} 1f; movq $1,%r8; jmp 2f; 1: movq $2,%r8; 2:')]
    cases += [(ALL, x) for x in [
        'movl $5,%ecx; 1: incq %r8; loop 1b', 'movl $9,%ecx; 1: cmpq $0,%r8; loope 1b',
        'movl $9,%ecx; 1: cmpq $0,%r8; loopne 1b', 'movl $40,%ecx; 1: addq %rcx,%r8; decl %ecx; jnz 1b',
        'movl $12,%ecx; 1: rolq $7,%r8; xorq %rcx,%r8; subq $1,%rcx; ja 1b',
    ]]
    cases += [('CPZSO', x) for x in [   # AND/XOR leave AF undefined
        'andl $7,%ecx; jrcxz 1f; movq $1,%r8; 1:', 'xorl %ecx,%ecx; jrcxz 1f; ud2; 1:', 'andl $7,%ecx; jecxz 1f; movq $1,%r8; 1:',
    ]]
    return cases


def sse_integer() -> list[tuple[str, str]]:
    ops = ['paddb', 'paddw', 'paddd', 'paddq', 'paddsb', 'paddsw', 'paddusb', 'paddusw', 'psubb', 'psubw',
           'psubd', 'psubq', 'psubsb', 'psubsw', 'psubusb', 'psubusw', 'pmullw', 'pmulhw', 'pmulhuw', 'pmuludq',
           'pmaddwd', 'psadbw', 'pavgb', 'pavgw', 'pminub', 'pmaxub', 'pminsw', 'pmaxsw', 'pcmpeqb', 'pcmpeqw',
           'pcmpeqd', 'pcmpgtb', 'pcmpgtw', 'pcmpgtd', 'pand', 'pandn', 'por', 'pxor', 'punpcklbw', 'punpcklwd',
           'punpckldq', 'punpcklqdq', 'punpckhbw', 'punpckhwd', 'punpckhdq', 'punpckhqdq', 'packsswb', 'packssdw',
           'packuswb']
    cases = []
    for op in ops:
        cases += [('-', f'{op} %xmm1,%xmm2'), ('-', f'{op} (%rbx),%xmm9'), ('-', f'{op} %xmm12,%xmm12')]
    for op in ['psllw', 'pslld', 'psllq', 'psrlw', 'psrld', 'psrlq', 'psraw', 'psrad']:
        cases += [('-', f'{op} $3,%xmm2'), ('-', f'{op} $15,%xmm2'), ('-', f'{op} $33,%xmm10'), ('-', f'{op} $70,%xmm2'),
                  ('-', f'movq %rcx,%xmm3; {op} %xmm3,%xmm2'), ('-', f'{op} %xmm3,%xmm2'), ('-', f'{op} 8(%rbx),%xmm2'),
                  ('-', f'movabsq $0x100000004,%rax; movq %rax,%xmm3; {op} %xmm3,%xmm2')]
    cases += [('-', x) for x in [
        'pslldq $5,%xmm2', 'pslldq $16,%xmm2', 'psrldq $3,%xmm2', 'psrldq $15,%xmm11',
        'pshufd $0x1b,%xmm1,%xmm2', 'pshufd $0xe4,(%rbx),%xmm2', 'pshuflw $0x39,%xmm1,%xmm2', 'pshufhw $0x93,%xmm1,%xmm2',
        'pmovmskb %xmm1,%r8d', 'pmovmskb %xmm14,%eax', 'movmskps %xmm1,%r8d', 'movmskpd %xmm1,%r8d', 'movmskps %xmm9,%eax',
        'pextrw $5,%xmm1,%r8d', 'pextrw $0,%xmm13,%eax', 'pinsrw $3,%r9d,%xmm1', 'pinsrw $7,8(%rbx),%xmm1',
        'movd %r8d,%xmm1', 'movq %r8,%xmm1', 'movd %xmm1,%r8d', 'movq %xmm1,%r8', 'movd 8(%rbx),%xmm1', 'movd %xmm1,8(%rbx)',
        'movq 8(%rbx),%xmm1', 'movq %xmm1,8(%rbx)', 'movq %xmm2,%xmm1',
        'movdqa (%rbx),%xmm1', 'movdqu 3(%rbx),%xmm1', 'movdqu %xmm1,5(%rbx)', 'movdqa %xmm1,16(%rbx)', 'movdqa %xmm8,%xmm15',
        'movntdq %xmm1,16(%rbx)', 'lddqu 3(%rbx),%xmm1', 'lddqu (%rbx),%xmm12',
        'pxor %xmm1,%xmm1', 'pcmpeqd %xmm1,%xmm1', 'pmuludq 16(%rbx),%xmm3', 'psadbw 16(%rbx),%xmm4',
    ]]
    return cases


def sse_float() -> list[tuple[str, str]]:
    cases = []
    for sfx in ['ss', 'sd', 'ps', 'pd']:
        for op in ['add', 'sub', 'mul', 'div', 'min', 'max', 'sqrt']:
            cases += [('-', f'{op}{sfx} %xmm2,%xmm1'), ('-', f'{op}{sfx} (%rbx),%xmm1'), ('-', f'{op}{sfx} %xmm11,%xmm10')]
        for predicate in range(8):
            cases += [('-', f'cmp{sfx} ${predicate},%xmm2,%xmm1'), ('-', f'cmp{sfx} ${predicate},(%rbx),%xmm6')]
    for sfx in ['ps', 'pd']:
        for op in ['and', 'andn', 'or', 'xor', 'unpckl', 'unpckh']:
            cases += [('-', f'{op}{sfx} %xmm2,%xmm1'), ('-', f'{op}{sfx} (%rbx),%xmm7')]
        cases += [('-', f'mova{sfx} (%rbx),%xmm1'), ('-', f'movu{sfx} 1(%rbx),%xmm1'), ('-', f'movu{sfx} %xmm1,3(%rbx)'),
                  ('-', f'mova{sfx} %xmm2,%xmm1'), ('-', f'movnt{sfx} %xmm2,16(%rbx)')]
    for compare in ['comiss', 'ucomiss', 'comisd', 'ucomisd']:
        cases += [(ALL, f'{compare} %xmm2,%xmm1'), (ALL, f'{compare} (%rbx),%xmm1'), (ALL, f'{compare} %xmm1,%xmm1')]
    cases += [('-', x) for x in [
        'movss (%rbx),%xmm1', 'movss %xmm2,%xmm1', 'movss %xmm1,8(%rbx)', 'movsd (%rbx),%xmm1', 'movsd %xmm2,%xmm1',
        'movsd %xmm1,8(%rbx)', 'movhps (%rbx),%xmm1', 'movlps 8(%rbx),%xmm1', 'movhps %xmm1,8(%rbx)', 'movlps %xmm1,8(%rbx)',
        'movhpd 8(%rbx),%xmm1', 'movlpd (%rbx),%xmm1', 'movhpd %xmm1,8(%rbx)', 'movlpd %xmm1,8(%rbx)',
        'movhlps %xmm2,%xmm1', 'movlhps %xmm2,%xmm1',
        'shufps $0x4e,%xmm2,%xmm1', 'shufps $0xb1,%xmm2,%xmm1', 'shufps $0x1b,(%rbx),%xmm1', 'shufpd $1,%xmm2,%xmm1',
        'shufpd $2,%xmm2,%xmm1', 'shufpd $3,(%rbx),%xmm1',
        'cvtsi2ssl %r8d,%xmm1', 'cvtsi2ssq %r8,%xmm1', 'cvtsi2sdl %r8d,%xmm1', 'cvtsi2sdq %r8,%xmm1',
        'cvtsi2sdq 8(%rbx),%xmm1', 'cvtsi2ssl 8(%rbx),%xmm1',
        'cvttss2si %xmm1,%r8d', 'cvttss2si %xmm1,%r8', 'cvttsd2si %xmm1,%r8d', 'cvttsd2si %xmm1,%r8',
        'cvtss2si %xmm1,%r8d', 'cvtss2si %xmm1,%r8', 'cvtsd2si %xmm1,%r8d', 'cvtsd2si %xmm1,%r8',
        'cvttsd2si (%rbx),%r8', 'cvttss2si 8(%rbx),%r8d', 'cvtsd2si 8(%rbx),%r8', 'cvtss2si (%rbx),%r8d',
        'cvttsd2si %xmm7,%eax', 'cvtsd2si %xmm12,%r14d',
        'cvtss2sd %xmm2,%xmm1', 'cvtss2sd (%rbx),%xmm1', 'cvtsd2ss %xmm2,%xmm1', 'cvtsd2ss 8(%rbx),%xmm1',
        'cvtdq2ps %xmm2,%xmm1', 'cvtps2dq %xmm2,%xmm1', 'cvttps2dq %xmm2,%xmm1', 'cvtps2dq (%rbx),%xmm1', 'cvttps2dq (%rbx),%xmm1',
        'cvtdq2pd %xmm2,%xmm1', 'cvtpd2dq %xmm2,%xmm1', 'cvttpd2dq %xmm2,%xmm1', 'cvtpd2dq (%rbx),%xmm1', 'cvttpd2dq (%rbx),%xmm1',
        'cvtps2pd %xmm2,%xmm1', 'cvtpd2ps %xmm2,%xmm1', 'cvtps2pd 8(%rbx),%xmm1', 'cvtpd2ps (%rbx),%xmm1',
        'rcpss %xmm2,%xmm1', 'rsqrtss %xmm2,%xmm1', 'rcpps %xmm2,%xmm1', 'rsqrtps %xmm2,%xmm1', 'rcpps (%rbx),%xmm3',
        'stmxcsr 8(%rbx)', 'movl $0x1f80,8(%rbx); ldmxcsr 8(%rbx)',
        'xorps %xmm1,%xmm1', 'xorpd %xmm5,%xmm5', 'movaps %xmm15,%xmm0',
    ]]
    return cases


GROUPS = {
    'integer': integer,
    'shift': shifts,
    'string': strings,
    'stack_flow': stack_and_flow,
    'sse_integer': sse_integer,
    'sse_float': sse_float,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, build in GROUPS.items():
        cases = list(dict.fromkeys(build()))     # drop duplicates, keep order
        lines = [f'# generated by scripts/engine_corpus.py: {len(cases)} cases, FLAGS | asm']
        lines += [f'{flags:7} | {code}' for flags, code in cases]
        (OUT / f'{name}.cases').write_text('\n'.join(lines) + '\n')
        total += len(cases)
        print(f'{name}: {len(cases)}')
    print(f'total: {total}')


if __name__ == '__main__':
    main()
