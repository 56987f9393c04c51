//! Whether to pin workers to CPUs (`[server] pin_workers`), from what the process may use.
//!
//! Pinning worker `i` to the `i`-th allowed CPU is right when the CPU set holds exactly one
//! CPU per worker: a cpuset given to this process alone (Kubernetes' static CPU manager
//! policy with Guaranteed pods, `taskset`, systemd `CPUAffinity=`). Under a CPU *quota*
//! (a pod's `limits.cpu` without a dedicated cpuset) the set is the whole node, so every pod
//! on the node would pin its workers to the same first cores and queue behind each other;
//! there, workers are left to the scheduler.

/// What to do about pinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Pin worker `i` to the `i`-th allowed CPU.
    Pin,
    /// Not asked for (`pin_workers = false`).
    Off,
    /// Asked for, but the CPU set is not one CPU per worker: `allowed` CPUs for `workers`
    /// workers (a quota, or a hand-set worker count).
    Refused {
        /// CPUs in the process's affinity mask.
        allowed: usize,
        /// Worker threads.
        workers: usize,
    },
}

/// The decision for `workers` workers when the affinity mask holds `allowed` CPUs.
pub fn pinning(pin_workers: bool, allowed: usize, workers: usize) -> Pinning {
    if !pin_workers {
        Pinning::Off
    } else if allowed == workers && workers > 0 {
        Pinning::Pin
    } else {
        Pinning::Refused { allowed, workers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_only_with_one_cpu_per_worker() {
        // A dedicated cpuset of 4 CPUs, 4 workers (auto): pinned.
        assert_eq!(pinning(true, 4, 4), Pinning::Pin);
        // A 2-CPU quota on a 16-CPU node: auto gives 2 workers, the set is all 16: refused,
        // or every pod of the node would pin to CPUs 0 and 1.
        assert_eq!(
            pinning(true, 16, 2),
            Pinning::Refused {
                allowed: 16,
                workers: 2
            }
        );
        // More workers than CPUs: sharing cores, pinning would stack them.
        assert!(matches!(pinning(true, 2, 4), Pinning::Refused { .. }));
        assert_eq!(pinning(false, 4, 4), Pinning::Off);
        assert!(matches!(pinning(true, 0, 0), Pinning::Refused { .. }));
    }
}
