//! C's `pow` and `log2` for the glibc build without Python, so that it needs
//! no libm.
//!
//! tokio's scheduler calls `pow` (for its average task poll time), and it is
//! the only libm function a release build uses (a debug build also calls
//! `log2`, from `num-bigint`); loading libm.so.6 for it maps and relocates a
//! 0.9 MB library and keeps about 0.5 MB of it resident (bench/PROFILING.md,
//! "Memory"). Defined here, the linker resolves the calls to these and,
//! linking `--as-needed`, drops libm (tests/test_config.py checks it). The
//! `libm` crate is musl's implementation ported to Rust. The Python build
//! keeps glibc's: it loads libm for libpython anyway, and Python's own float
//! maths must not change under a user's code. The static build links musl's
//! libm as before.

/// `pow(x, y)`, C's signature and semantics.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// `log2(x)`, C's signature and semantics.
#[no_mangle]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

#[cfg(test)]
mod tests {
    use super::{log2, pow};

    #[test]
    fn agrees_with_the_float_methods() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(9.0, 0.5), 3.0);
        assert_eq!(pow(0.8, 0.0), 1.0);
        assert!(pow(-1.0, 0.5).is_nan());
        // tokio's use: 1 - (1 - alpha)^n for a poll count n.
        let (alpha, n) = (0.1_f64, 61.0_f64);
        let expected = (n * (1.0 - alpha).ln()).exp();
        assert!((pow(1.0 - alpha, n) - expected).abs() < 1e-12);
        assert_eq!(log2(1024.0), 10.0);
        assert!(log2(-1.0).is_nan());
    }
}
