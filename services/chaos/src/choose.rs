//! Picking the victim: a running pod, not being deleted already, old enough, and not this one.

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

/// Why a pod cannot be picked; the first reason that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spared {
    Myself,
    Terminating,
    NotRunning,
    TooYoung,
}

/// Why `pod` must be spared, if it must.
pub fn spared(pod: &Pod, now: i64, min_age_seconds: i64, me: Option<&str>) -> Option<Spared> {
    let meta = &pod.metadata;
    if me.is_some() && meta.name.as_deref() == me {
        return Some(Spared::Myself);
    }
    if meta.deletion_timestamp.is_some() {
        return Some(Spared::Terminating);
    }
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) != Some("Running") {
        return Some(Spared::NotRunning);
    }
    let started = status
        .and_then(|s| s.start_time.as_ref())
        .or(meta.creation_timestamp.as_ref())
        .map(|t| t.0.as_second());
    match started {
        Some(started) if now - started >= min_age_seconds => None,
        _ => Some(Spared::TooYoung),
    }
}

/// One eligible pod at random, or how many pods were spared for each reason.
pub fn choose<'a>(
    pods: &'a [Pod],
    now: i64,
    min_age_seconds: i64,
    me: Option<&str>,
    rng: &mut impl Rng,
) -> Result<&'a Pod, Vec<(Spared, usize)>> {
    let eligible: Vec<&Pod> = pods
        .iter()
        .filter(|p| spared(p, now, min_age_seconds, me).is_none())
        .collect();
    if eligible.is_empty() {
        let mut reasons: Vec<(Spared, usize)> = Vec::new();
        for reason in pods
            .iter()
            .filter_map(|p| spared(p, now, min_age_seconds, me))
        {
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => reasons.push((reason, 1)),
            }
        }
        return Err(reasons);
    }
    Ok(eligible[rng.random_range(0..eligible.len())])
}

#[cfg(test)]
pub mod tests {
    use k8s_openapi::{
        api::core::v1::PodStatus,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    pub const NOW: i64 = 1_800_000_000;

    pub fn pod(name: &str, phase: &str, age: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(NOW - age).unwrap())),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                start_time: Some(Time(Timestamp::from_second(NOW - age).unwrap())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn spares_itself_the_young_the_dying_and_the_not_running() {
        let mut dying = pod("dying", "Running", 600);
        dying.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
        let cases = [
            (pod("chaos-1", "Running", 600), Some(Spared::Myself)),
            (dying, Some(Spared::Terminating)),
            (pod("pending", "Pending", 600), Some(Spared::NotRunning)),
            (pod("young", "Running", 59), Some(Spared::TooYoung)),
            (pod("api-1", "Running", 60), None),
        ];
        for (p, expected) in cases {
            assert_eq!(
                spared(&p, NOW, 60, Some("chaos-1")),
                expected,
                "{:?}",
                p.metadata.name
            );
        }
    }

    #[test]
    fn picks_only_eligible_pods_and_each_of_them_sometimes() {
        let pods = [
            pod("chaos-1", "Running", 600),
            pod("api-1", "Running", 600),
            pod("young", "Running", 1),
            pod("consumer-0", "Running", 600),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let victim = choose(&pods, NOW, 60, Some("chaos-1"), &mut rng).unwrap();
            seen.insert(victim.metadata.name.clone().unwrap());
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["api-1", "consumer-0"]
        );
    }

    #[test]
    fn says_why_nothing_was_picked() {
        let pods = [pod("young-1", "Running", 1), pod("young-2", "Running", 2)];
        let err = choose(&pods, NOW, 60, None, &mut StdRng::seed_from_u64(1)).unwrap_err();
        assert_eq!(err, [(Spared::TooYoung, 2)]);
        assert_eq!(
            choose(&[], NOW, 60, None, &mut StdRng::seed_from_u64(1)).unwrap_err(),
            []
        );
    }
}
