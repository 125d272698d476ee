use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn spec(name: &str, last: u8) -> ServerSpec {
    ServerSpec {
        name: name.into(),
        ipv4: Some(Ipv4Addr::new(10, 0, 0, last)),
        ipv6: None,
        port: 5060,
        state: ServerState::Active,
        weight: 1.0,
    }
}

/// The pool a first start makes of `specs` (every one added, in order).
fn seeded(specs: &[ServerSpec]) -> Pool {
    let done = reload(&Pool::default(), &[], specs);
    assert_eq!(done.refused, []);
    done.pool
}

fn add(pool: &Pool, spec: ServerSpec) -> Result<Pool, PoolError> {
    pool.apply(&Change::Add(spec)).map(|(pool, _)| pool)
}

fn slot(pool: &Pool, name: &str) -> u32 {
    pool.server(name).unwrap().index
}

#[test]
fn a_first_start_seeds_the_pool_in_config_order() {
    let pool = seeded(&[spec("a", 1), spec("b", 2), spec("c", 3)]);
    let slots: Vec<(&str, u32)> = pool.servers().iter().map(|s| (s.name.as_str(), s.index)).collect();
    assert_eq!(slots, [("a", 0), ("b", 1), ("c", 2)]);
    assert!(pool.servers().iter().all(|s| s.healthy));
}

#[test]
fn bad_additions_are_refused_by_name_and_change_nothing() {
    let pool = seeded(&[spec("a", 1), ServerSpec { ipv6: Some(Ipv6Addr::LOCALHOST), ..spec("b", 2) }]);
    let cases = [
        (spec("a", 9), PoolError::DuplicateName("a".into())),
        (spec("c", 1), PoolError::DuplicateAddress { address: Ipv4Addr::new(10, 0, 0, 1).into(), other: "a".into() }),
        (
            ServerSpec { ipv4: None, ipv6: Some(Ipv6Addr::LOCALHOST), ..spec("c", 3) },
            PoolError::DuplicateAddress { address: Ipv6Addr::LOCALHOST.into(), other: "b".into() },
        ),
        (ServerSpec { ipv4: None, ..spec("c", 3) }, PoolError::NoAddress("c".into())),
        (ServerSpec { name: String::new(), ..spec("c", 3) }, PoolError::EmptyName),
        (ServerSpec { port: 0, ..spec("c", 3) }, PoolError::BadPort),
        (ServerSpec { weight: 0.0, ..spec("c", 3) }, PoolError::BadWeight(0.0)),
        (ServerSpec { weight: -2.0, ..spec("c", 3) }, PoolError::BadWeight(-2.0)),
        (ServerSpec { state: ServerState::Removing, ..spec("c", 3) }, PoolError::BadState(ServerState::Removing)),
    ];
    for (bad, expected) in cases {
        assert_eq!(add(&pool, bad.clone()), Err(expected), "{bad:?}");
    }
    let nan = add(&pool, ServerSpec { weight: f64::NAN, ..spec("c", 3) }).unwrap_err();
    assert!(nan.to_string().contains("not a positive number"), "{nan}");
    assert_eq!(pool.servers().len(), 2, "nothing was added");
}

#[test]
fn removing_needs_another_active_server_and_marks_the_server_removing() {
    let pool = seeded(&[spec("a", 1), ServerSpec { state: ServerState::Draining, ..spec("b", 2) }]);
    assert_eq!(pool.apply(&Change::Remove("x".into())), Err(PoolError::Unknown("x".into())));
    assert_eq!(pool.apply(&Change::Remove("a".into())), Err(PoolError::LastActive("a".into(), "removing")));
    let (pool, effect) = pool.apply(&Change::Remove("b".into())).unwrap();
    let Effect::Removing(home) = effect else { panic!("{effect:?}") };
    assert_eq!((home.name.as_str(), home.index, home.state), ("b", 1, ServerState::Removing));
    assert!(!pool.server("b").unwrap().accepts_new(), "a server being removed takes no new clients");
    assert!(pool.usable("b"), "its clients stay until moved");
}

#[test]
fn setting_refuses_unknown_servers_bad_weights_and_draining_the_last_active_one() {
    let pool = seeded(&[spec("a", 1), ServerSpec { state: ServerState::Draining, ..spec("b", 2) }]);
    assert_eq!(pool.apply(&Change::Update(spec("x", 9))), Err(PoolError::Unknown("x".into())));
    let negative = ServerSpec { weight: -1.0, ..spec("a", 1) };
    assert_eq!(pool.apply(&Change::Update(negative)), Err(PoolError::BadWeight(-1.0)));
    let drained = ServerSpec { state: ServerState::Draining, ..spec("a", 1) };
    assert_eq!(pool.apply(&Change::Update(drained)), Err(PoolError::LastActive("a".into(), "draining")));
    let heavier = ServerSpec { weight: 3.0, state: ServerState::Draining, ..spec("b", 2) };
    let (pool, effect) = pool.apply(&Change::Update(heavier)).unwrap();
    assert!(matches!(effect, Effect::Changed(ref home) if home.index == 1 && home.weight == 3.0), "{effect:?}");
    assert_eq!(pool.server("b").unwrap().weight, 3.0);
}

#[test]
fn a_removal_is_called_off_by_setting_the_server_active() {
    let pool = seeded(&[spec("a", 1), spec("b", 2)]);
    let (removing, _) = pool.apply(&Change::Remove("b".into())).unwrap();
    let (back, _) = removing.apply(&Change::Update(spec("b", 2))).unwrap();
    assert_eq!(back.server("b").unwrap().state, ServerState::Active);
}

#[test]
fn a_removed_servers_slot_is_reused_only_once_every_other_slot_was_used() {
    let pool = seeded(&[spec("a", 1), spec("b", 2)]);
    let (pool, _) = pool.apply(&Change::Remove("a".into())).unwrap();
    let (pool, gone) = pool.retire("a").unwrap();
    assert_eq!((gone.index, pool.retired()), (0, &[0][..]));
    let mut pool = add(&pool, spec("c", 3)).unwrap();
    assert_eq!(slot(&pool, "c"), 2, "a never-used slot first");
    for i in 3..MAX_SERVERS {
        let last = ServerSpec { ipv4: Some(Ipv4Addr::from(0x0a01_0000 + i)), ..spec(&format!("s{i}"), 0) };
        pool = add(&pool, last).unwrap();
    }
    assert_eq!(pool.next_slot(), MAX_SERVERS);
    let pool = add(&pool, spec("d", 4)).unwrap();
    assert_eq!(slot(&pool, "d"), 0, "then the slot retired longest ago");
    assert_eq!(add(&pool, spec("e", 5)), Err(PoolError::Full), "then none");
}

#[test]
fn a_cli_change_outlives_a_reload_of_the_same_config() {
    let config = [spec("a", 1), spec("b", 2)];
    let pool = seeded(&config);
    let (pool, _) = pool.apply(&Change::Update(ServerSpec { weight: 5.0, ..spec("a", 1) })).unwrap();
    let (pool, _) = pool.apply(&Change::Add(spec("c", 3))).unwrap();
    let done = reload(&pool, &config, &config);
    assert_eq!((done.effects, done.refused), (vec![], vec![]));
    assert_eq!(done.pool, pool);
    assert_eq!(done.applied, config);
}

#[test]
fn a_reload_applies_only_the_fields_the_config_changed() {
    let config = [spec("a", 1), spec("b", 2)];
    let pool = seeded(&config);
    // The operator drains a and reweights b; then the config reweights a.
    let (pool, _) = pool.apply(&Change::Update(ServerSpec { state: ServerState::Draining, ..spec("a", 1) })).unwrap();
    let (pool, _) = pool.apply(&Change::Update(ServerSpec { weight: 4.0, ..spec("b", 2) })).unwrap();
    let changed = [ServerSpec { weight: 2.0, ..spec("a", 1) }, spec("b", 2)];
    let done = reload(&pool, &config, &changed);
    let a = done.pool.server("a").unwrap();
    assert_eq!((a.weight, a.state), (2.0, ServerState::Draining), "the config's weight, the operator's state");
    assert_eq!(done.pool.server("b").unwrap().weight, 4.0, "the config did not change b");
    assert_eq!(done.effects.len(), 1);
    assert_eq!(done.applied, changed);
}

#[test]
fn a_reload_adds_and_removes_what_the_config_does() {
    let config = [spec("a", 1), spec("b", 2)];
    let pool = seeded(&config);
    let next = [spec("a", 1), spec("c", 3)];
    let done = reload(&pool, &config, &next);
    assert!(
        matches!(&done.effects[..], [Effect::Added(c), Effect::Removing(b)] if c.name == "c" && c.index == 2 && b.name == "b")
    );
    assert_eq!(done.pool.server("b").unwrap().state, ServerState::Removing);
    assert_eq!(done.applied, next);
}

#[test]
fn a_server_replaced_under_another_name_may_keep_its_address() {
    let config = [spec("a", 1), spec("old", 2)];
    let pool = seeded(&config);
    let done = reload(&pool, &config, &[spec("a", 1), spec("new", 2)]);
    assert_eq!(done.refused, []);
    assert_eq!(done.pool.server("old").unwrap().state, ServerState::Removing);
    assert_eq!(done.pool.server("new").unwrap().index, 2);
}

#[test]
fn a_refused_change_is_not_recorded_as_applied_and_is_tried_again() {
    let config = [spec("a", 1), spec("b", 2)];
    let pool = seeded(&config);
    let clash = [spec("a", 1), spec("b", 2), spec("c", 1)];
    let done = reload(&pool, &config, &clash);
    let refused = PoolError::DuplicateAddress { address: Ipv4Addr::new(10, 0, 0, 1).into(), other: "a".into() };
    assert_eq!(done.refused, [("c".to_owned(), refused)]);
    assert_eq!(done.applied, config, "c is not applied");
    let (pool, _) = done
        .pool
        .apply(&Change::Update(ServerSpec { ipv4: Some(Ipv4Addr::new(10, 0, 0, 9)), ..spec("a", 1) }))
        .unwrap();
    let again = reload(&pool, &done.applied, &clash);
    assert_eq!(again.refused, []);
    assert_eq!(again.pool.server("c").unwrap().index, 2);
}

#[test]
fn a_server_the_operator_removed_stays_removed_and_its_config_change_is_reported() {
    let config = [spec("a", 1), spec("b", 2)];
    let pool = seeded(&config);
    let (pool, _) = pool.apply(&Change::Remove("b".into())).unwrap();
    let (pool, _) = pool.retire("b").unwrap();
    assert_eq!(reload(&pool, &config, &config).refused, [], "an unchanged config says nothing");
    let changed = [spec("a", 1), ServerSpec { weight: 2.0, ..spec("b", 2) }];
    let done = reload(&pool, &config, &changed);
    assert_eq!(done.refused, [("b".to_owned(), PoolError::RemovedSince("b".into()))]);
    assert!(done.pool.server("b").is_none());
}

#[test]
fn the_pool_and_what_the_config_applied_round_trip_through_the_store() {
    let config = [spec("a", 1), spec("b", 2)];
    let (pool, _) = seeded(&config).apply(&Change::Remove("a".into())).unwrap();
    let (pool, _) = pool.retire("a").unwrap();
    let (back, applied) = restore(Some(to_store(&pool, &config)));
    assert_eq!((back, applied), (pool, config.to_vec()));
    assert_eq!(restore(None), (Pool::default(), vec![]));
}
