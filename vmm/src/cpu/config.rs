//! `--cpu MODEL[,+feat][,-feat][,check=none|warn|enforce]` and
//! `--cpus N[,sockets=S,cores=C,threads=T]`.

use std::str::FromStr;

use super::features::{Feature, FeatureTable};
use super::models::{self, Model};
use super::CpuError;

/// What to do about requested features the host cannot provide (QEMU's check/enforce).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckMode {
    /// Clear them silently.
    None,
    /// Clear them with one warning line each.
    #[default]
    Warn,
    /// Refuse to start, listing them all.
    Enforce,
}

impl FromStr for CheckMode {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, CpuError> {
        match s {
            "none" => Ok(CheckMode::None),
            "warn" => Ok(CheckMode::Warn),
            "enforce" => Ok(CheckMode::Enforce),
            _ => Err(CpuError::BadOption(format!(
                "check={s}: expected none, warn or enforce"
            ))),
        }
    }
}

/// A parsed `--cpu` value.
#[derive(Clone, Debug)]
pub struct CpuConfig {
    pub model: &'static Model,
    /// Features added with `+name` (or `name=on`), in order.
    pub plus: Vec<Feature>,
    /// Features removed with `-name` (or `name=off`), in order.
    pub minus: Vec<Feature>,
    pub check: CheckMode,
}

impl Default for CpuConfig {
    /// kiln's default: `host,check=warn`.
    fn default() -> Self {
        // `host` is always present in the embedded table (checked by unit tests).
        "host".parse().expect("host model exists")
    }
}

impl FromStr for CpuConfig {
    type Err = CpuError;

    fn from_str(s: &str) -> Result<Self, CpuError> {
        let mut parts = s.split(',');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            return Err(CpuError::BadOption("empty CPU model name".into()));
        }
        let model = models::find(name)?;
        let table = FeatureTable::get();
        let lookup = |n: &str| {
            table.lookup(n).ok_or_else(|| CpuError::UnknownFeature {
                name: n.to_string(),
                close: table.close_matches(n),
            })
        };
        let mut config = CpuConfig {
            model,
            plus: Vec::new(),
            minus: Vec::new(),
            check: CheckMode::Warn,
        };
        for part in parts {
            let part = part.trim();
            let (feature, on) = if let Some(n) = part.strip_prefix('+') {
                (lookup(n)?, true)
            } else if let Some(n) = part.strip_prefix('-') {
                (lookup(n)?, false)
            } else if let Some(v) = part.strip_prefix("check=") {
                config.check = v.parse()?;
                continue;
            } else if part == "enforce" {
                config.check = CheckMode::Enforce;
                continue;
            } else if let Some((n, v)) = part.split_once('=') {
                let on = match v {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => {
                        return Err(CpuError::BadOption(format!(
                            "{part}: feature value must be on or off"
                        )))
                    }
                };
                (lookup(n)?, on)
            } else if part.is_empty() {
                return Err(CpuError::BadOption(format!("empty item in --cpu {s}")));
            } else {
                return Err(CpuError::BadOption(format!(
                    "{part}: expected +feature, -feature, feature=on|off or check=..."
                )));
            };
            // The last mention of a feature wins, as in QEMU.
            config.plus.retain(|f| *f != feature);
            config.minus.retain(|f| *f != feature);
            if on {
                config.plus.push(feature);
            } else {
                config.minus.push(feature);
            }
        }
        Ok(config)
    }
}

/// vCPU topology: `N[,sockets=S,cores=C,threads=T]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cpus: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Topology {
    /// N single-core, single-thread sockets (QEMU's default split).
    pub fn flat(cpus: u32) -> Self {
        Topology {
            cpus,
            sockets: cpus,
            cores: 1,
            threads: 1,
        }
    }

    /// Bits of the x2APIC ID used for the thread within a core.
    pub fn thread_bits(&self) -> u32 {
        ceil_log2(self.threads)
    }

    /// Bits used for the core within a socket.
    pub fn core_bits(&self) -> u32 {
        ceil_log2(self.cores)
    }

    /// The x2APIC ID of vCPU `index` (Intel SDM vol. 3A, 10.12.8 / CPUID leaf 0BH).
    pub fn apic_id(&self, index: u32) -> u32 {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let socket = index / (self.threads * self.cores);
        (socket << (self.thread_bits() + self.core_bits())) | (core << self.thread_bits()) | thread
    }
}

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl FromStr for Topology {
    type Err = CpuError;

    fn from_str(s: &str) -> Result<Self, CpuError> {
        let bad = |m: String| CpuError::BadTopology(format!("--cpus {s}: {m}"));
        let mut parts = s.split(',');
        let count = |v: &str, what: &str| -> Result<u32, CpuError> {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=255).contains(&n) => Ok(n),
                _ => Err(bad(format!(
                    "{what} must be a number from 1 to 255, got {v:?}"
                ))),
            }
        };
        let cpus = count(parts.next().unwrap_or(""), "the vCPU count")?;
        let (mut sockets, mut cores, mut threads) = (None, None, None);
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part}: expected key=value")))?;
            let slot = match k.trim() {
                "sockets" => &mut sockets,
                "cores" => &mut cores,
                "threads" => &mut threads,
                other => return Err(bad(format!("unknown key {other}"))),
            };
            *slot = Some(count(v, k)?);
        }
        let topo = match (sockets, cores, threads) {
            (None, None, None) => Topology::flat(cpus),
            _ => {
                let cores = cores.unwrap_or(1);
                let threads = threads.unwrap_or(1);
                let sockets = sockets.unwrap_or(cpus / (cores * threads).max(1));
                Topology {
                    cpus,
                    sockets,
                    cores,
                    threads,
                }
            }
        };
        if topo.sockets * topo.cores * topo.threads != cpus {
            return Err(bad(format!(
                "sockets*cores*threads = {}*{}*{} does not equal {cpus}",
                topo.sockets, topo.cores, topo.threads
            )));
        }
        Ok(topo)
    }
}
