//! Which instruction set the CPU kernels run with: detected once at start-up, or
//! forced with `LLAMA_GPU_ISA=scalar|avx2|avx512` (for tests and comparisons).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run code compiled for `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The best available ISA, unless `LLAMA_GPU_ISA` names another available one.
pub fn selected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("LLAMA_GPU_ISA").ok().and_then(|v| {
            [Isa::Scalar, Isa::Avx2, Isa::Avx512]
                .into_iter()
                .find(|i| i.name().eq_ignore_ascii_case(v.trim()))
        });
        match forced {
            Some(isa) if isa.is_available() => isa,
            _ => [Isa::Avx512, Isa::Avx2, Isa::Scalar]
                .into_iter()
                .find(|i| i.is_available())
                .unwrap_or(Isa::Scalar),
        }
    })
}

/// Defines `fn $name` (with the given visibility) running `$portable` compiled for the
/// ISA `selected_isa` picks: AVX-512 and AVX2 copies carry their target features, so the
/// compiler vectorizes the same code for each. The copies perform the same operations, so
/// all give the same bits.
macro_rules! isa_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident $(<$lt:lifetime>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $portable:path) => {
        $(#[$doc])*
        $vis fn $name $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            fn avx512 $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? {
                $portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2 $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? {
                $portable($($arg),*)
            }
            match crate::selected_isa() {
                // SAFETY: `selected_isa` only returns ISAs this CPU has.
                #[cfg(target_arch = "x86_64")]
                crate::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                crate::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $portable($($arg),*),
            }
        }
    };
}
pub(crate) use isa_dispatch;
