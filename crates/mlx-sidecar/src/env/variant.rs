//! The platform variants of the worker's requirements (`sidecar/requirements/<variant>.txt`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::EnvError;

/// Which build of MLX to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// MLX on the CPU (`mlx-cpu`): the default on Linux and other non-macOS systems.
    Cpu,
    /// MLX with Metal on Apple silicon: the default on macOS.
    Metal,
    /// MLX on an NVIDIA GPU with a CUDA 12 driver.
    Cuda12,
    /// MLX on an NVIDIA GPU with a CUDA 13 driver.
    Cuda13,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 4] = [
        Variant::Cpu,
        Variant::Metal,
        Variant::Cuda12,
        Variant::Cuda13,
    ];

    /// The default for the platform this binary was built for: metal on macOS, cpu elsewhere.
    pub fn platform_default() -> Variant {
        if cfg!(target_os = "macos") {
            Variant::Metal
        } else {
            Variant::Cpu
        }
    }

    /// The variant's name, e.g. "cuda12"; also the requirement file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Cpu => "cpu",
            Variant::Metal => "metal",
            Variant::Cuda12 => "cuda12",
            Variant::Cuda13 => "cuda13",
        }
    }

    /// The requirement file, relative to the extracted worker directory.
    pub fn requirements_file(self) -> String {
        format!("requirements/{}.txt", self.name())
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = EnvError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == wanted)
            .ok_or_else(|| EnvError::UnknownVariant(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().ok(), Some(v));
        }
        assert!("rocm".parse::<Variant>().is_err());
        assert_eq!("CUDA12".parse::<Variant>().ok(), Some(Variant::Cuda12));
    }
}
