//! Choosing a deployment within a model group.
//!
//! For now: random by weight. The randomness comes in as an argument, so the choice is
//! reproducible in tests.

use crate::config::Deployment;

/// Picks a deployment by weight, given a uniformly random `roll`. `None` only for an empty
/// group, which validation rules out.
pub fn pick_weighted(deployments: &[Deployment], roll: u64) -> Option<usize> {
    let total: u64 = deployments.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = roll % total;
    for (i, d) in deployments.iter().enumerate() {
        let w = u64::from(d.weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dep(weight: u32) -> Deployment {
        Deployment {
            provider: 0,
            model: "m".into(),
            weight,
            label: "p/m".into(),
            rpm: None,
            tpm: None,
        }
    }

    #[test]
    fn weights_are_honoured_exactly_over_a_cycle() {
        let ds = [dep(1), dep(3)];
        let mut counts = [0; 2];
        for roll in 0..400 {
            counts[pick_weighted(&ds, roll).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300]);
        assert_eq!(pick_weighted(&[], 5), None);
    }

    proptest! {
        #[test]
        fn always_picks_a_member(weights in prop::collection::vec(1u32..1000, 1..8), roll in any::<u64>()) {
            let ds: Vec<_> = weights.into_iter().map(dep).collect();
            let i = pick_weighted(&ds, roll).unwrap();
            prop_assert!(i < ds.len());
        }
    }
}
