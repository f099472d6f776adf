//! Groups: streamer replicas share the partitions' leadership, and the instances of one
//! logical consumer share its partitions; both rebalance when a member joins, leaves or dies,
//! and the totals stay exact throughout.

use std::{collections::BTreeMap, time::Duration};

use rocket_rides_tests::{Consumer, Streamer, System, wait_until};

use crate::CAUGHT_UP;

/// Rebalancing after a join, leave or crash: the bound.
const REBALANCE: Duration = Duration::from_secs(30);
const PARTITIONS: usize = 8;

/// Waits until the live `streamers` lead every partition between them, evenly.
async fn wait_streamers_share(streamers: &[&Streamer]) {
    wait_until(
        "the streamers to share the partitions evenly",
        REBALANCE,
        || async {
            let mut led = Vec::new();
            for s in streamers {
                led.push(s.partitions_led().await?);
            }
            let (min, max) = (led.iter().min().unwrap(), led.iter().max().unwrap());
            match (led.iter().sum::<u32>() as usize, max - min) {
                (PARTITIONS, 0 | 1) => Ok(()),
                _ => Err(format!("partitions led: {led:?}")),
            }
        },
    )
    .await;
}

/// Waits until `instances` (live, of one logical consumer) own all its partitions evenly, as
/// GetTotal shows them.
async fn wait_instances_share(instances: &[&Consumer], names: &[&str]) {
    wait_until(
        "the instances to share the partitions evenly",
        REBALANCE,
        || async {
            let total = instances[0].try_total().await?;
            let mut owned: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
            for p in &total.partitions {
                match owned.get_mut(p.owner.as_str()) {
                    Some(n) => *n += 1,
                    None => {
                        return Err(format!("partition {} owned by {:?}", p.partition, p.owner));
                    }
                }
            }
            let counts: Vec<usize> = owned.values().copied().collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            match (counts.iter().sum::<usize>(), max - min) {
                (PARTITIONS, 0 | 1) => Ok(()),
                _ => Err(format!("owned: {owned:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_streamers_and_two_consumer_groups_of_three_stay_exact_through_kills() {
    let sys = System::start().await;
    let migrated = sys.migrate(&[("LOG_PARTITIONS", &PARTITIONS.to_string())]);
    assert!(migrated.status.success(), "{migrated:?}");
    let failures = [("DOUBLE_SEND_RATE", "0.1"), ("CRASH_RATE", "0.1")];

    let mut api = sys.api(&[]);
    api.start_ready().await;
    let mut streamers: Vec<Streamer> = (0..3)
        .map(|i| sys.streamer(&format!("streamer{i}"), &failures))
        .collect();
    for s in &mut streamers {
        s.start_ready().await;
    }
    // Two logical consumers, three instances each.
    let mut groups: Vec<Vec<Consumer>> = Vec::new();
    for name in ["totals-a", "totals-b"] {
        let mut instances = Vec::new();
        for i in 0..3 {
            let instance = format!("{name}-{i}");
            let mut env = failures.to_vec();
            env.extend([
                ("CONSUMER_NAME", name),
                ("CONSUMER_INSTANCE", instance.as_str()),
            ]);
            let mut consumer = sys.consumer(&instance, &env);
            consumer.start_ready().await;
            instances.push(consumer);
        }
        groups.push(instances);
    }
    wait_streamers_share(&streamers.iter().collect::<Vec<_>>()).await;
    for (name, instances) in ["totals-a", "totals-b"].iter().zip(&groups) {
        let names: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_instances_share(&instances.iter().collect::<Vec<_>>(), &names).await;
    }

    // 64 callers while a streamer and one instance of each consumer are SIGKILLed: the others
    // take their partitions over (leases run out, the groups share out again).
    let load = tokio::spawn(api.load(3000, 64));
    groups[0][0].wait_counted(300).await;
    streamers[0].kill().await;
    groups[0][0].kill().await;
    groups[1][1].kill().await;
    wait_streamers_share(&[&streamers[1], &streamers[2]]).await;
    wait_instances_share(
        &[&groups[0][1], &groups[0][2]],
        &["totals-a-1", "totals-a-2"],
    )
    .await;
    wait_instances_share(
        &[&groups[1][0], &groups[1][2]],
        &["totals-b-0", "totals-b-2"],
    )
    .await;

    // They come back and get their share again.
    streamers[0].start_ready().await;
    groups[0][0].start_ready().await;
    groups[1][1].start_ready().await;
    wait_streamers_share(&streamers.iter().collect::<Vec<_>>()).await;
    assert_eq!(load.await.unwrap(), 3000);
    for instances in &groups {
        sys.wait_exact(instances, CAUGHT_UP).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_joins_takes_its_share_and_one_that_leaves_hands_it_over() {
    let sys = System::start().await;
    let migrated = sys.migrate(&[("LOG_PARTITIONS", &PARTITIONS.to_string())]);
    assert!(migrated.status.success(), "{migrated:?}");
    let mut api = sys.api(&[]);
    let mut streamer = sys.streamer("streamer", &[]);
    api.start_ready().await;
    streamer.start_ready().await;
    let instance = |i: usize| {
        let name = format!("totals-{i}");
        sys.consumer(
            &name,
            &[("CONSUMER_NAME", "totals"), ("CONSUMER_INSTANCE", &name)],
        )
    };
    let mut instances: Vec<Consumer> = (0..4).map(instance).collect();
    for c in &mut instances[..3] {
        c.start_ready().await;
    }
    let load = tokio::spawn(api.load(2000, 16));
    wait_instances_share(
        &instances[..3].iter().collect::<Vec<_>>(),
        &["totals-0", "totals-1", "totals-2"],
    )
    .await;

    // A fourth joins mid-load: every instance ends with two of the eight partitions.
    instances[3].start_ready().await;
    let all = ["totals-0", "totals-1", "totals-2", "totals-3"];
    wait_instances_share(&instances.iter().collect::<Vec<_>>(), &all).await;
    // One leaves (SIGTERM): it releases what it owned, and the other three share it out.
    assert!(instances[1].terminate().await.success());
    wait_instances_share(
        &[&instances[0], &instances[2], &instances[3]],
        &["totals-0", "totals-2", "totals-3"],
    )
    .await;
    assert_eq!(load.await.unwrap(), 2000);
    // Exact: no record was applied twice as partitions changed hands.
    sys.wait_exact([&instances[0]], CAUGHT_UP).await;
}
