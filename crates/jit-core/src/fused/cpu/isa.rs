//! Which vector instructions a kernel may use, as values: a capability token exists only where
//! the CPU has its instructions, so code holding one may call the intrinsics it covers.
//!
//! [`Baseline`] (every CPU), [`Avx2`] (AVX2 + FMA) and [`Avx512`] (AVX-512F/VL + AVX2 + FMA).
//! Only [`Level::detect`] (run-time detection) makes the x86-64 tokens; their fields are
//! private. `multiversion!` compiles a kernel once per token type and runs the version of the
//! [`selected`] level; [`force`] caps that level (tests run every variant the host can run;
//! `JIT_CPU_ISA=baseline|avx2|avx512` does the same for a benchmark).

use core::sync::atomic::{AtomicU8, Ordering};

/// A kernel variant's instruction set, as a zero-sized capability token.
pub trait Isa: Copy + Send + Sync {
    /// Whether this variant fuses multiply-adds (one rounding): the x86-64 tokens, and the
    /// baseline on aarch64 (always FMA). Elsewhere `f32::mul_add` would be a slow libm call.
    const FMA: bool;

    /// The AVX2 + FMA token, where this variant has those instructions.
    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        None
    }

    /// The AVX-512 token, where this variant has those instructions.
    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        None
    }

    /// `a·b + c`, fused into one instruction where [`Isa::FMA`], else a product and a sum.
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        if Self::FMA { a.mul_add(b, c) } else { a * b + c }
    }
}

/// Every CPU: the target's own vector width (SSE2 on x86-64, NEON, SIMD128 in wasm32).
#[derive(Debug, Clone, Copy)]
pub struct Baseline;

impl Isa for Baseline {
    const FMA: bool = cfg!(target_arch = "aarch64");
}

/// Proof that the CPU has AVX2 and FMA (made only by [`Level::detect`]).
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Isa for Avx2 {
    const FMA: bool = true;

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        Some(self)
    }
}

/// Proof that the CPU has AVX-512F, AVX-512VL, AVX2 and FMA (made only by [`Level::detect`]).
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Isa for Avx512 {
    const FMA: bool = true;

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        // AVX-512 was detected together with AVX2 and FMA.
        Some(Avx2(()))
    }

    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        Some(self)
    }
}

/// A kernel variant the CPU can run, with its token.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// [`Baseline`].
    Baseline,
    /// [`Avx2`].
    Avx2(Avx2),
    /// [`Avx512`].
    Avx512(Avx512),
}

impl Level {
    /// The widest level this CPU has.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512vl") {
                    return Level::Avx512(Avx512(()));
                }
                return Level::Avx2(Avx2(()));
            }
        }
        Level::Baseline
    }

    /// Every level this CPU has, narrowest first.
    pub fn available() -> Vec<Level> {
        let mut levels = vec![Level::Baseline];
        match Level::detect() {
            Level::Baseline => {}
            Level::Avx2(t) => levels.push(Level::Avx2(t)),
            Level::Avx512(t) => levels.extend([Level::Avx2(Isa::avx2(t).expect("AVX-512 has AVX2")), Level::Avx512(t)]),
        }
        levels
    }

    /// The level's name: `baseline`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2(_) => "avx2",
            Level::Avx512(_) => "avx512",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Level::Baseline => 0,
            Level::Avx2(_) => 1,
            Level::Avx512(_) => 2,
        }
    }
}

/// The cap [`force`] set: `u8::MAX` for none yet (read `JIT_CPU_ISA` once), else a rank.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the kernels at `name` (`baseline`, `avx2`, `avx512`; a level the CPU lacks means its
/// widest), process-wide; `None` lifts the cap. Returns an error for any other name.
pub fn force(name: Option<&str>) -> Result<(), String> {
    let rank = match name {
        None => 2,
        Some("baseline") => 0,
        Some("avx2") => 1,
        Some("avx512") => 2,
        Some(other) => return Err(format!("unknown CPU kernel level {other:?}: use baseline, avx2 or avx512")),
    };
    CAP.store(rank, Ordering::Relaxed);
    Ok(())
}

/// The level the kernels run: the CPU's widest, capped by [`force`] (or `JIT_CPU_ISA`).
#[inline]
pub fn selected() -> Level {
    let mut cap = CAP.load(Ordering::Relaxed);
    if cap == u8::MAX {
        let env = std::env::var("JIT_CPU_ISA").ok();
        // An unknown name in the environment leaves the kernels uncapped.
        if force(env.as_deref()).is_err() {
            let _ = force(None);
        }
        cap = CAP.load(Ordering::Relaxed);
    }
    let mut level = Level::detect();
    while level.rank() > cap {
        level = match level {
            Level::Avx512(t) => Level::Avx2(Isa::avx2(t).expect("AVX-512 has AVX2")),
            _ => Level::Baseline,
        };
    }
    level
}

/// Defines `fn $name(args)` compiled once per [`Level`] and running the [`selected`] one: on
/// x86-64 for AVX-512, for AVX2 + FMA and for the baseline (elsewhere once: wasm32 is built with
/// SIMD128 for the whole module, aarch64 always has NEON). The body sees `$isa`, the variant's
/// token (an [`Isa`]), to pass on to the helpers it calls; `[_]` where it needs none.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident[$isa:pat]($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)] // kernels take their slices and sizes one by one
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic<I: $crate::fused::cpu::isa::Isa>($isa: I, $($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::fused::cpu::isa::{Avx2, Avx512, Level};
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512(isa: Avx512, $($arg: $ty),*) {
                    generic(isa, $($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2(isa: Avx2, $($arg: $ty),*) {
                    generic(isa, $($arg),*)
                }
                match $crate::fused::cpu::isa::selected() {
                    // SAFETY: the token proves the CPU has the features `avx512` is compiled for.
                    Level::Avx512(isa) => return unsafe { avx512(isa, $($arg),*) },
                    // SAFETY: the token proves the CPU has the features `avx2` is compiled for.
                    Level::Avx2(isa) => return unsafe { avx2(isa, $($arg),*) },
                    Level::Baseline => {}
                }
            }
            generic($crate::fused::cpu::isa::Baseline, $($arg),*)
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        multiversion! { $(#[$doc])* $vis fn $name[_]($($arg: $ty),*) $body }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_named() {
        let levels = Level::available();
        assert_eq!(levels[0].name(), "baseline");
        assert!(levels.windows(2).all(|w| w[0].rank() < w[1].rank()));
        assert_eq!(levels.last().expect("one level").name(), Level::detect().name());
        assert!(force(Some("sse9")).is_err());
    }

    #[test]
    fn a_forced_level_is_the_one_selected() {
        // The only test of this binary that forces a level.
        force(Some("baseline")).expect("a valid name");
        assert_eq!(selected().name(), "baseline");
        force(None).expect("no cap");
        assert_eq!(selected().name(), Level::detect().name());
    }
}
