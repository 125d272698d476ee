//! The harness for several edges (issue #11) proves itself: a three-member
//! etcd cluster that keeps answering with a member killed; two edges (redb
//! each, until the etcd store exists) in front of one service address,
//! reached over ECMP, both taking and answering REGISTERs, and the second
//! taking them all once the first is killed; and an edge's link to etcd
//! cut and restored.

use redirector_tests::{
    etcd::EtcdCluster,
    operator::wait_until,
    privileged,
    sip_pool::{Registrar, sipp_over, start_registrars},
    topology::{Family, serial},
    two_edges::TwoEdges,
};

#[test]
fn an_etcd_cluster_of_three_answers_with_a_member_killed() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut cluster = EtcdCluster::new();
    assert_eq!(cluster.healthy_members(), 3);
    assert!(cluster.writable_from(&cluster.ns, "/harness/a", "1"));

    // The leader, the member whose loss matters most.
    let leader = cluster.leader().expect("the cluster has a leader");
    cluster.kill_member(leader);
    assert_eq!(cluster.healthy_members(), 2);
    assert!(cluster.writable_from(&cluster.ns, "/harness/b", "2"), "two of three members are a quorum");
    assert_ne!(cluster.leader(), Some(leader), "another member leads");
    cluster.start_member(leader);
    assert_eq!(cluster.healthy_members(), 3);
    let expected = [("/harness/a", "1"), ("/harness/b", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(cluster.get_prefix("/harness/"), expected);
}

#[test]
fn registers_reach_both_edges_over_ecmp_and_the_survivor_once_one_is_killed() {
    if privileged() {
        ["nat", "dsr"].into_iter().for_each(spreads_and_survives);
    }
}

/// REGISTERs from 16 ports spread over both edges, all answered, one over
/// IPv6 too; after a kill, 8 more all meet the surviving edge.
fn spreads_and_survives(mode: &'static str) {
    let mut two = TwoEdges::new(mode);
    start_registrars(&mut two.pool, Registrar::Kamailio);
    two.start_edge(0, "");
    two.start_edge(1, "");

    // 16 source ports: the odds that L4 hashing sends all to one edge are 2^-15.
    assert!(two.register("spread", 16, 6000), "every REGISTER is answered");
    let counts = || [0, 1].map(|edge| two.first_contact(edge, "requests"));
    wait_until(|| counts().iter().sum::<u64>() >= 16, "every client met an edge's first contact");
    let counts = counts();
    assert!(counts.iter().all(|&n| n >= 1), "both edges had first contacts: {counts:?}");
    let over_v6 = sipp_over(&two.pool, Family::V6, "register_expect_200.xml", 1, 6050, "v6-");
    assert!(over_v6.status.success(), "a REGISTER over IPv6 is answered");

    two.kill_edge(0);
    assert!(two.register("after", 8, 6100), "every REGISTER is answered through edge 1");
    let survivor = || two.first_contact(1, "requests");
    wait_until(|| survivor() >= counts[1] + 8, "edge 1 took all 8 new clients");
}

#[test]
fn an_edges_link_to_etcd_can_be_cut_and_restored() {
    if !privileged() {
        return;
    }
    let two = TwoEdges::new("nat");
    let reachable = |edge: usize| two.etcd.writable_from(two.ns(edge), &format!("/harness/{edge}"), "up");
    assert!(reachable(0) && reachable(1), "both edges reach etcd");

    two.cut_store(1);
    assert!(!reachable(1), "edge 1 is cut off");
    assert!(reachable(0), "edge 0 is not");

    two.restore_store(1);
    assert!(reachable(1), "edge 1 reaches etcd again");
}
