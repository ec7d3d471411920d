//! Sharded replicas: which replica syncs which environment (pure: the
//! daemon's `shard` edge reads the Leases and carries the decision out).
//!
//! Every live replica (one with an unexpired member Lease) has a quota:
//! the environments split as evenly as they go, `floor(E / n)` each and
//! one more for the first `E mod n` replicas in name order, so the quotas
//! add up to `E` exactly and no replica's exceeds `ceil(E / n)`. A replica
//! under its quota takes free environments (no holder, or an expired
//! Lease), the ones it ranks highest first (rendezvous hashing, so that
//! replicas starting together reach for different ones); one over it
//! releases the ones it ranks lowest. With no change of members or
//! environments, a replica at its quota does nothing: the rule is stable.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// The longest Lease name the API server takes (a DNS subdomain).
pub const MAX_LEASE_NAME: usize = 253;

/// What one replica should do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Free environments to try to take (optimistic concurrency decides
    /// between replicas reaching for the same one).
    pub acquire: Vec<String>,
    /// Environments this replica holds beyond its quota, to hand over (at
    /// the end of the reconcile in flight, or sooner: the daemon's
    /// `HAND_OVER_GRACE`).
    pub release: Vec<String>,
}

/// How many environments `me` should hold: `members` are the live
/// replicas (`me` among them or not: it is counted).
pub fn quota(environments: usize, members: &BTreeSet<String>, me: &str) -> usize {
    let mut all: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    all.insert(me);
    let n = all.len();
    let rank = all.iter().position(|m| *m == me).unwrap_or(0);
    environments / n + usize::from(rank < environments % n)
}

/// The decision of `me`, given every environment, the live members and the
/// live holder of each environment's Lease (absent or `None`: free).
pub fn decide(
    environments: &[String],
    members: &BTreeSet<String>,
    holders: &BTreeMap<String, Option<String>>,
    me: &str,
) -> Decision {
    let envs: BTreeSet<&String> = environments.iter().collect();
    let share = quota(envs.len(), members, me);
    let holder = |env: &str| holders.get(env).cloned().flatten();
    let mut mine: Vec<&String> = envs
        .iter()
        .copied()
        .filter(|e| holder(e).as_deref() == Some(me))
        .collect();
    let mut free: Vec<&String> = envs
        .iter()
        .copied()
        .filter(|e| holder(e).is_none())
        .collect();
    // Highest rank first.
    let by_rank = |a: &&String, b: &&String| rank(me, b).cmp(&rank(me, a)).then(a.cmp(b));
    mine.sort_by(by_rank);
    free.sort_by(by_rank);
    if mine.len() > share {
        Decision {
            acquire: Vec::new(),
            release: mine[share..].iter().map(|e| (*e).clone()).collect(),
        }
    } else {
        Decision {
            acquire: free.into_iter().take(share - mine.len()).cloned().collect(),
            release: Vec::new(),
        }
    }
}

/// How much `member` wants `env` (rendezvous hashing).
fn rank(member: &str, env: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0])
        .chain_update(env.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The Lease of an environment: `<lease-name>-<env>`.
pub fn environment_lease(base: &str, env: &str) -> String {
    bounded(&format!("{base}-{env}"))
}

/// The prefix of every member Lease: `<lease-name>.member-`. The dot keeps
/// member Leases apart from environment Leases, `<lease-name>-<env>`: the
/// two differ in the character after `<lease-name>`, so
/// `<lease-name>-member-x` is environment `member-x`'s.
pub fn member_prefix(base: &str) -> String {
    format!("{base}.member-")
}

/// The heartbeat Lease of a replica: `<lease-name>.member-<id>`, its
/// identity made a valid name (lower case; other characters `-`).
pub fn member_lease(base: &str, identity: &str) -> String {
    let id: String = identity
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let name = format!("{}{id}", member_prefix(base));
    if id == identity {
        bounded(&name)
    } else {
        // Two identities that differ only in what was replaced keep
        // different names.
        bounded(&format!("{name}-{}", short_digest(identity)))
    }
}

/// A name cut to [`MAX_LEASE_NAME`], with a digest of the whole name in
/// place of the cut part so that two long names stay apart.
fn bounded(name: &str) -> String {
    if name.len() <= MAX_LEASE_NAME {
        return name.to_string();
    }
    let digest = short_digest(name);
    let mut cut = MAX_LEASE_NAME - digest.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = name[..cut].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{digest}")
}

fn short_digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn envs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("env{i}")).collect()
    }

    /// Every replica decides and acts in turn (acquisitions of the same
    /// environment in one round: the first wins, as optimistic
    /// concurrency has it) until nothing changes.
    fn settle(
        environments: &[String],
        members: &BTreeSet<String>,
        holders: &mut BTreeMap<String, Option<String>>,
    ) -> usize {
        for round in 0..100 {
            let mut changed = false;
            for m in members {
                let d = decide(environments, members, holders, m);
                for e in d.release {
                    holders.insert(e, None);
                    changed = true;
                }
                for e in d.acquire {
                    if holders.get(&e).cloned().flatten().is_none() {
                        holders.insert(e, Some(m.clone()));
                        changed = true;
                    }
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("the assignment did not settle");
    }

    fn load(holders: &BTreeMap<String, Option<String>>, m: &str) -> usize {
        holders.values().filter(|h| h.as_deref() == Some(m)).count()
    }

    #[test]
    fn two_replicas_split_four_environments_two_and_two() {
        let (e, m) = (envs(4), set(&["a", "b"]));
        let mut holders = BTreeMap::new();
        settle(&e, &m, &mut holders);
        assert_eq!((load(&holders, "a"), load(&holders, "b")), (2, 2));
    }

    #[test]
    fn a_lone_survivor_takes_every_environment_of_a_dead_replica() {
        let e = envs(4);
        let mut holders = BTreeMap::new();
        settle(&e, &set(&["a", "b"]), &mut holders);
        // b died: its Leases expired, so they read as free.
        for h in holders.values_mut() {
            if h.as_deref() == Some("b") {
                *h = None;
            }
        }
        settle(&e, &set(&["a"]), &mut holders);
        assert_eq!(load(&holders, "a"), 4);
    }

    #[test]
    fn a_third_replica_joining_gets_a_share() {
        let e = envs(4);
        let mut holders = BTreeMap::new();
        settle(&e, &set(&["a", "b"]), &mut holders);
        settle(&e, &set(&["a", "b", "c"]), &mut holders);
        let loads = ["a", "b", "c"].map(|m| load(&holders, m));
        assert!(loads.iter().all(|l| (1..=2).contains(l)), "{loads:?}");
        assert_eq!(loads.iter().sum::<usize>(), 4);
    }

    #[test]
    fn a_replica_started_first_takes_everything_then_hands_over_its_excess() {
        let e = envs(5);
        let mut holders = BTreeMap::new();
        settle(&e, &set(&["a"]), &mut holders);
        assert_eq!(load(&holders, "a"), 5);
        let d = decide(&e, &set(&["a", "b"]), &holders, "a");
        assert_eq!(d.release.len(), 5 - quota(5, &set(&["a", "b"]), "a"));
        assert!(d.acquire.is_empty());
    }

    #[test]
    fn an_environment_held_by_a_replica_not_yet_seen_as_a_member_is_not_taken() {
        let e = envs(2);
        let holders = BTreeMap::from([("env0".to_string(), Some("ghost".to_string()))]);
        let d = decide(&e, &set(&["a"]), &holders, "a");
        assert_eq!(d.acquire, vec!["env1".to_string()]);
    }

    #[test]
    fn lease_names_are_valid_and_bounded() {
        let valid = |n: &str| {
            n.len() <= MAX_LEASE_NAME
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        assert_eq!(
            environment_lease("tenantsync-leader", "prod"),
            "tenantsync-leader-prod"
        );
        assert_eq!(
            member_lease("tenantsync-leader", "web-7f-4242"),
            "tenantsync-leader.member-web-7f-4242"
        );
        let odd = member_lease("tenantsync-leader", "Host_Name-42");
        assert!(valid(&odd) && odd.starts_with("tenantsync-leader.member-host-name-42-"));
        assert_ne!(odd, member_lease("tenantsync-leader", "Host.Name-42"));
        // An environment called `member-<id>` never shares a Lease with
        // the replica `<id>`.
        assert_ne!(
            environment_lease("tenantsync-leader", "member-web-7f-4242"),
            member_lease("tenantsync-leader", "web-7f-4242")
        );
        assert!(
            !environment_lease("tenantsync-leader", "member-x")
                .starts_with(&member_prefix("tenantsync-leader"))
        );
        let long = "x".repeat(250);
        let (a, b) = (
            environment_lease(&long, "prod"),
            environment_lease(&long, "prod2"),
        );
        assert!(valid(&a) && valid(&b) && a != b, "{a} {b}");
    }

    proptest! {
        #[test]
        fn the_assignment_is_bounded_complete_and_stable(
            n_envs in 0usize..40,
            n_members in 1usize..8,
            start in proptest::collection::vec(0usize..9, 40),
        ) {
            let e = envs(n_envs);
            let members: BTreeSet<String> = (0..n_members).map(|i| format!("m{i}")).collect();
            let names: Vec<&String> = members.iter().collect();
            // Any start: environments held by members, by no one, or by a
            // departed replica whose Lease expired (free).
            let mut holders: BTreeMap<String, Option<String>> = e
                .iter()
                .zip(&start)
                .map(|(env, s)| (env.clone(), names.get(*s).map(|m| (*m).clone())))
                .collect();
            settle(&e, &members, &mut holders);
            let ceiling = n_envs.div_ceil(n_members);
            for m in &members {
                // Bounded load.
                prop_assert!(load(&holders, m) <= ceiling);
                // Stable: nothing more to do.
                prop_assert_eq!(decide(&e, &members, &holders, m), Decision::default());
            }
            // Every environment owned, exactly once (a map holds one holder).
            for env in &e {
                prop_assert!(holders.get(env).cloned().flatten().is_some(), "{} is not owned", env);
            }
        }
    }
}
