//! Which clients the owner puts on the fast path after a round of first
//! contact, gathered so that each run of installs is one batched kernel
//! write (`FastPath::install_many`) rather than two calls a client.

use std::collections::HashMap;

use crate::{
    edge::{admission::Refused, assignments::Assigned, first_contact::Action, pool::Pool},
    model::{Origin, ServerState},
    sip::Aor,
};

/// A client to put on the fast path to the server in slot `server`, if
/// `aor`'s assignment still has `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Due {
    pub aor: Aor,
    pub origin: Origin,
    pub server: u32,
    pub generation: u64,
}

/// First contact's actions as the owner applies them, in order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A run of consecutive installs, written together.
    Installs(Vec<Due>),
    /// Any other action, applied on its own.
    One(Action),
}

/// `actions` with each run of consecutive installs gathered into one step;
/// nothing changes order.
pub(super) fn steps(actions: Vec<Action>) -> Vec<Step> {
    let mut steps = Vec::new();
    for action in actions {
        let Action::Install { origin, server, aor, generation } = action else {
            steps.push(Step::One(action));
            continue;
        };
        let due = Due { aor, origin, server, generation };
        match steps.last_mut() {
            Some(Step::Installs(run)) => run.push(due),
            _ => steps.push(Step::Installs(vec![due])),
        }
    }
    steps
}

/// The installs of new clients once their assignments are committed:
/// each address a client came straight from, for a client assigned a
/// home that is not down and has an address of that client's family (as
/// first contact answers: a client of another family gets a 503, and no
/// fast path). A client refused an assignment gets none.
pub(super) fn installs_of_new(
    clients: &[crate::edge::first_contact::NewClient],
    assigned: &HashMap<Aor, Result<Assigned, Refused>>,
    pool: &Pool,
) -> Vec<Due> {
    let mut due = Vec::new();
    for client in clients {
        let Some(Ok(done)) = assigned.get(&client.aor) else { continue };
        let Some(home) = pool.server(&done.assignment.server) else { continue };
        if home.effective_state() == ServerState::Down {
            continue;
        }
        let answered = client.installs.iter().filter(|origin| home.address_for(origin.client).is_some());
        due.extend(answered.map(|&origin| Due {
            aor: client.aor.clone(),
            origin,
            server: home.index,
            generation: done.assignment.generation,
        }));
    }
    due
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{edge::first_contact::NewClient, model::HomeServer, store::Assignment};

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.com"), "AOR").unwrap()
    }

    fn origin(port: u16) -> Origin {
        let client: SocketAddr = format!("192.0.2.1:{port}").parse().unwrap();
        Origin { client, service: "192.0.2.10:5060".parse().unwrap(), asks_rport: true }
    }

    fn install(user: &str, port: u16) -> Action {
        Action::Install { origin: origin(port), server: 1, aor: aor(user), generation: 1 }
    }

    fn due(user: &str, port: u16) -> Due {
        Due { aor: aor(user), origin: origin(port), server: 1, generation: 1 }
    }

    fn ping() -> Action {
        Action::PingAnswered { server: 0, sequence: 7 }
    }

    #[test]
    fn a_batch_of_installs_is_one_step() {
        let actions: Vec<Action> = (0..200).map(|i| install(&format!("u{i}"), 7000 + i)).collect();
        let expected: Vec<Due> = (0..200).map(|i| due(&format!("u{i}"), 7000 + i)).collect();
        assert_eq!(steps(actions), vec![Step::Installs(expected)]);
    }

    #[test]
    fn other_actions_split_the_runs_and_keep_their_place() {
        let actions = vec![install("a", 1), install("b", 2), ping(), install("c", 3), ping(), ping()];
        assert_eq!(
            steps(actions),
            vec![
                Step::Installs(vec![due("a", 1), due("b", 2)]),
                Step::One(ping()),
                Step::Installs(vec![due("c", 3)]),
                Step::One(ping()),
                Step::One(ping()),
            ]
        );
        assert_eq!(steps(Vec::new()), Vec::new());
    }

    fn home(name: &str, index: u32, state: ServerState) -> HomeServer {
        HomeServer {
            name: name.into(),
            index,
            ipv4: Some(std::net::Ipv4Addr::new(198, 51, 100, 1 + index as u8)),
            ipv6: None,
            port: 5060,
            state,
            healthy: true,
            weight: 1.0,
        }
    }

    fn new_client(user: &str, ports: &[u16]) -> NewClient {
        NewClient {
            aor: aor(user),
            source: "192.0.2.1".parse().unwrap(),
            direct: true,
            installs: ports.iter().map(|&port| origin(port)).collect(),
            cookie_home: None,
        }
    }

    fn assigned_to(user: &str, server: &str) -> (Aor, Result<Assigned, Refused>) {
        let assignment = Assignment { generation: 3, ..Assignment::new(aor(user), server.into()) };
        (aor(user), Ok(Assigned { assignment, moved: false }))
    }

    #[test]
    fn only_committed_clients_of_a_usable_home_are_installed_all_at_once() {
        let pool = Pool::new(vec![home("up", 0, ServerState::Active), home("down", 1, ServerState::Down)]);
        let clients = [
            new_client("alice", &[7001, 7002]),
            new_client("bob", &[7003]),
            new_client("carol", &[7004]),
            new_client("dave", &[7005]),
            new_client("erin", &[]),
        ];
        let assigned = HashMap::from([
            assigned_to("alice", "up"),
            assigned_to("bob", "down"),
            (aor("carol"), Err(Refused::RateLimited)),
            assigned_to("erin", "up"),
        ]);
        let installs = installs_of_new(&clients, &assigned, &pool);
        let alice = |port| Due { aor: aor("alice"), origin: origin(port), server: 0, generation: 3 };
        assert_eq!(installs, vec![alice(7001), alice(7002)], "bob's home is down, carol refused, dave unanswered");
    }

    #[test]
    fn a_client_of_a_family_its_home_lacks_is_not_installed() {
        let pool = Pool::new(vec![home("up", 0, ServerState::Active)]);
        let mut client = new_client("alice", &[7001]);
        client.installs[0].client = "[2001:db8::1]:7001".parse().unwrap();
        let assigned = HashMap::from([assigned_to("alice", "up")]);
        assert_eq!(installs_of_new(&[client], &assigned, &pool), Vec::new());
    }
}
