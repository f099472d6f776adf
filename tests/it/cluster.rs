//! The log on a real Redis Cluster (3 masters, 3 replicas, local redis-servers): commands are
//! routed by slot, and a master's failover loses no acknowledged entry.

use rocket_rides_tests::{System, stream};

use crate::CAUGHT_UP;

#[tokio::test(flavor = "multi_thread")]
async fn the_log_survives_the_failover_of_its_master_on_a_redis_cluster() {
    let mut sys = System::start_on_cluster().await;
    let env = [("DOUBLE_SEND_RATE", "0.2"), ("CRASH_RATE", "0.2")];
    let p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    let load = tokio::spawn(p.api.load(1500, 8));
    let seen = p.consumers[0].wait_counted(200).await;

    // SIGKILL the master holding the stream: its replica takes over within the node timeout.
    // The streamer counts a batch only once a replica has it (REDIS_WAIT_REPLICAS defaults to
    // 1 on a cluster), so nothing acknowledged was only on the dead master.
    let cluster = sys.cluster.as_mut().unwrap();
    let (killed, promoted) = cluster.fail_over(&stream(0), CAUGHT_UP).await;
    assert_ne!(killed, promoted);
    // The old master comes back as the new master's replica, so batches reach a replica again.
    cluster.nodes[killed].restart().await;

    p.consumers[0].wait_counted(seen + 200).await;
    assert_eq!(load.await.unwrap(), 1500);
    // Exact means no gap either: a consumer that met one would have halted short of the total.
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}
