#!/usr/bin/env python3
"""Derives the coefficients of lib/numerics/normal.hpp (run: /usr/bin/python3 scripts/fit_normal_tail.py; needs
mpmath: apt-get install python3-mpmath).

erfc(z) = t Q(t) exp(-z^2) with t = 1 / (1 + P z), z >= 0. Q is smooth on [t_min, 1] (t_min = t at z = Z_MAX, where
Phi(-sqrt(2) z) is far below float's smallest subnormal), so its Chebyshev interpolant converges geometrically. The
interpolant is computed with mpmath at 40 digits and rewritten as a polynomial in u = A t + B (t's interval mapped
onto [-1, 1]), whose coefficients fall off, so Horner's rule in double loses nothing. The report is the worst
relative error of Q, so evaluated in double, against mpmath's erfc(z) exp(z^2) / t on a grid of z.
"""
import mpmath as mp

mp.mp.dps = 40
P, Z_MAX, DEGREE = mp.mpf("0.3"), mp.mpf("10.5"), 18
T_MIN = 1 / (1 + P * Z_MAX)


def q_of(t):
    z = (1 / t - 1) / P
    return mp.erfc(z) * mp.exp(z * z) / t


def chebyshev_to_monomial(c):
    basis = [[mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]]  # T_j's coefficients, lowest power first
    while len(basis) < len(c):
        a, b = [mp.mpf(0)] + [2 * x for x in basis[-1]], basis[-2]
        basis.append([x - (b[k] if k < len(b) else 0) for k, x in enumerate(a)])
    return [mp.fsum(cj * (tj[k] if k < len(tj) else 0) for cj, tj in zip(c, basis)) for k in range(len(c))]


def main():
    n = DEGREE + 1
    angles = [mp.pi * (k + mp.mpf(1) / 2) / n for k in range(n)]
    values = [q_of((T_MIN + 1) / 2 + (1 - T_MIN) / 2 * mp.cos(a)) for a in angles]
    cheb = [2 * mp.fsum(v * mp.cos(j * a) for v, a in zip(values, angles)) / n for j in range(n)]
    cheb[0] /= 2
    mono = [float(x) for x in chebyshev_to_monomial(cheb)]
    a, b = float(2 / (1 - T_MIN)), float(-(1 + T_MIN) / (1 - T_MIN))
    worst = 0.0
    for i in range(4001):
        z = float(Z_MAX) * i / 4000
        t = 1 / (1 + float(P) * z)
        u = a * t + b
        q = 0.0
        for m in reversed(mono):
            q = q * u + m
        exact = q_of(mp.mpf(t))
        worst = max(worst, abs(float((q - exact) / exact)))
    print(f"// u = {a!r} t + {b!r}; worst relative error of Q in double: {worst:.2e}")
    print("constexpr double kTailPolynomial[] = {  // the coefficient of u^0 first")
    for j in range(0, n, 4):
        print("    " + " ".join(f"{x!r}," for x in mono[j:j + 4]))
    print("};")


if __name__ == "__main__":
    main()
