//! Choosing the compute device from a setting string.
//!
//! Accepted: `cpu`, `cuda` (= `cuda:0`) and `cuda:N`. CUDA needs the crate's
//! `cuda` feature; without it a CUDA setting is an error that says how to get
//! it, never a silent fallback to the CPU.

pub use candle_core::Device;

/// A device setting that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`; use `cpu`, `cuda` or `cuda:N` (N = GPU index)")]
    Unknown(String),
    #[error(
        "device `{0}` needs CUDA support, but this build has none; \
         rebuild with `--features cuda` or set the device to `cpu`"
    )]
    CudaNotBuilt(String),
    #[error("cannot open device `{device}`: {detail}")]
    Unavailable { device: String, detail: String },
}

/// What a device string asks for, before any hardware is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens the device a setting names.
pub fn device_from_str(s: &str) -> Result<Device, DeviceError> {
    open(s.parse()?)
}

/// Opens a parsed device.
pub fn open(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
        device: format!("cuda:{n}"),
        detail: e.to_string(),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::CudaNotBuilt(format!("cuda:{n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!(
            " CUDA ".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(0))
        );
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(1))
        );
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!(matches!(device_from_str("cpu"), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_fix() {
        let err = device_from_str("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
