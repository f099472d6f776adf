//! The log on a real Redis Cluster (3 masters, 3 replicas, local redis-servers): commands are
//! routed by slot, and a master's failover loses no acknowledged entry.

use std::collections::BTreeMap;

use rocket_rides_tests::{System, stream};

use crate::CAUGHT_UP;

#[tokio::test(flavor = "multi_thread")]
async fn the_log_survives_the_failover_of_every_master_on_a_redis_cluster() {
    let mut sys = System::start_on_cluster().await;
    let migrated = sys.migrate(&[("LOG_PARTITIONS", "6")]);
    assert!(migrated.status.success(), "{migrated:?}");
    let env = [("DOUBLE_SEND_RATE", "0.2"), ("CRASH_RATE", "0.2")];
    let p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    const RIDES: usize = 4000;
    let load = tokio::spawn(p.api.load(RIDES, 8));
    let mut seen = p.consumers[0].wait_counted(200).await;

    // The partitions' streams spread over the masters by their hash tags: one partition per
    // master, to fail each master over in turn.
    let cluster = sys.cluster.as_mut().unwrap();
    let mut per_master = BTreeMap::new();
    for partition in 0..6 {
        let master = cluster
            .master_of(&stream(partition))
            .await
            .expect("a master");
        per_master.entry(master).or_insert(partition);
    }
    assert_eq!(
        per_master.len(),
        3,
        "six partitions on fewer than three masters"
    );
    for partition in per_master.into_values() {
        // SIGKILL the master: its replica takes over within the node timeout. The streamer
        // counts a batch only once a replica has it (REDIS_WAIT_REPLICAS defaults to 1 on a
        // cluster), so nothing acknowledged was only on the dead master.
        let cluster = sys.cluster.as_mut().unwrap();
        let (killed, promoted) = cluster.fail_over(&stream(partition), CAUGHT_UP).await;
        assert_ne!(killed, promoted);
        // Back as the new master's replica, so batches reach a replica again.
        cluster.nodes[killed].restart().await;
        // Streaming goes on (unless the load is over already).
        seen = p.consumers[0]
            .wait_counted((seen + 100).min(RIDES as i64))
            .await;
    }
    assert_eq!(load.await.unwrap(), RIDES);
    // Exact means no gap either: a consumer that met one would have halted short of the total.
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}
