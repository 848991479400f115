//! e^x for the CPU kernels' inner loops, in plain arithmetic the compiler vectorises, and
//! [`vectorised`] to compile those loops for AVX2 where the CPU has it.
//!
//! `f32::exp` is a call into libm per element, which keeps every loop around it scalar: the
//! attention softmax and the GELU spent most of their time there. This is the usual scheme
//! (Cephes' `expf`): x = n·ln 2 + r with |r| ≤ ln 2 / 2, a degree-7 polynomial for e^r, and 2^n
//! built in the exponent bits; relative error below 2·10⁻⁷ (the test checks it).

/// 1.5·2²³: adding it rounds a float of magnitude below 2²² to an integer, which then sits in
/// the low bits of the sum's representation.
const ROUNDER: f32 = 12_582_912.0;

/// e^x; exactly 0 below −87 (where e^x leaves the normal range) and +∞ above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.7);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let exponent = (shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32 + 127) as u32;
    let value = e_r * f32::from_bits(exponent << 23);
    match x {
        x if x < -87.0 => 0.0,
        x if x > 88.7 => f32::INFINITY,
        _ => value,
    }
}

/// Runs `f` compiled for AVX2 when the CPU has it, else as built (x86-64's baseline is SSE2).
/// The kernels' loops are plain Rust; inlined here they get 8-wide vectors instead of 4, which
/// made the GELU loop 1.8× faster on this machine.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// What this CPU runs, for benchmark headers: its model name (from `/proc/cpuinfo`) and the
/// instruction set each kernel family dispatches to at run time: gemm (candle's matmul and the
/// fused linear; AVX-512 only in a build with the `gemm-avx512` feature) and the loops
/// [`vectorised`] compiles for AVX2.
pub fn cpu_and_dispatch() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    #[cfg(target_arch = "x86_64")]
    let (gemm, loops) = {
        let avx512 = std::is_x86_feature_detected!("avx512f");
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let gemm = match (avx512 && cfg!(feature = "gemm-avx512"), avx2) {
            (true, _) => "AVX-512 (x86-v4)",
            (false, true) => "AVX2 + FMA (x86-v3)",
            (false, false) => "SSE2 baseline",
        };
        (gemm, if std::is_x86_feature_detected!("avx2") { "AVX2" } else { "SSE2" })
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (gemm, loops) = ("as built", "as built");
    format!(
        "{model}, {} threads; gemm dispatches {gemm}, the engine's kernel loops {loops}",
        candle_core::utils::get_num_threads()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_agrees_with_libm_to_two_parts_in_ten_million() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((super::exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(super::exp(-1e9), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(1e9), f32::INFINITY);
    }
}
