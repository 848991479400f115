//! Statistics over repeated runs: mean, standard deviation, and Student's t for the confidence
//! interval and the paired test of the gain across seeds.

/// The mean and the sample standard deviation (n − 1; 0 for a single value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
    (mean, (squares / (n - 1.0)).sqrt())
}

/// P(|T| ≥ |t|) for T ~ Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, ½).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// The t with P(|T| ≥ t) = 1 − `confidence` (e.g. 0.95 → 2.776 at df 4), by bisection on
/// [`t_two_sided_p`], which falls steadily in t.
pub fn t_quantile(confidence: f64, df: f64) -> f64 {
    let (mut low, mut high) = (0.0, 1e6);
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if t_two_sided_p(mid, df) > 1.0 - confidence {
            low = mid;
        } else {
            high = mid;
        }
    }
    (low + high) / 2.0
}

/// I_x(a, b), by the continued fraction of Numerical Recipes (§6.4), on the side where it
/// converges fast.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))] {
            d = 1.0 + aa * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + aa / c;
            c = if c.abs() < TINY { TINY } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0, Lanczos (g = 7, n = 9), accurate to about 1e-15.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series: f64 = COEFFICIENTS[0] + (1..9).map(|i| COEFFICIENTS[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) {
        assert!((a - b).abs() < tolerance, "{a} vs {b}");
    }

    // Reference values from mpmath (betainc, regularized; findroot), 30 digits.
    #[test]
    fn student_t_matches_reference_values() {
        close(t_two_sided_p(2.0, 4.0), 0.116_116_523_516_815_6, 1e-12);
        close(t_two_sided_p(-2.0, 4.0), 0.116_116_523_516_815_6, 1e-12);
        close(t_two_sided_p(0.0, 7.0), 1.0, 1e-12);
        close(t_quantile(0.95, 1.0), 12.706_204_736_174_7, 1e-9);
        close(t_quantile(0.95, 4.0), 2.776_445_105_197_794, 1e-9);
        close(t_quantile(0.95, 30.0), 2.042_272_456_301_238, 1e-9);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13);
        close(ln_gamma(10.0), 362_880f64.ln(), 1e-12);
    }

    #[test]
    fn mean_and_sample_deviation() {
        let (mean, sd) = mean_sd(&[0.01, 0.02, 0.03, 0.04, 0.05]);
        close(mean, 0.03, 1e-15);
        close(sd, 0.015_811_388_300_841_9, 1e-15);
        assert_eq!(mean_sd(&[0.7]), (0.7, 0.0));
    }
}
