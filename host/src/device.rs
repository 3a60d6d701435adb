//! The device a command runs on, as every binary spells it: `auto`, `cpu`, `cuda`, `cuda:N`.
//! One parser for the trainer (libtorch) and the scorers (ONNX Runtime); each maps the
//! choice onto its own runtime.

/// What a device string asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when it can be had, else the CPU (the command says which it used).
    Auto,
    Cpu,
    /// CUDA device N; an error when it cannot be had.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<u16>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(usize::from(n))),
                _ => Err(format!("unknown device `{other}` (expected auto, cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_refuses_the_rest() {
        for (s, d) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>(), Ok(d), "{s}");
        }
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", "CUDA", "cuda:99999999999"] {
            let e = bad.parse::<DeviceChoice>().expect_err(bad);
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }
}
