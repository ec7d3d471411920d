//! Sharded replicas (`run --shard`) on the real control plane: a Lease per
//! environment, the environments split between live replicas, a dead
//! replica's taken over when its Leases expire, a webhook received by a
//! replica that does not hold an environment passed on to the one that
//! does, and a joining replica given a share.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::Value;
use tenantsync::daemon::leader::{LEASE_DURATION, RETRY_PERIOD};
use tenantsync::sync::inventory::SYSTEM_NAMESPACE;
use tenantsync::sync::shard::{environment_lease, member_lease};

use crate::daemon_e2e::{Guard, free_port, http, metric, status, wait_for};
use crate::support::audit::{self, Identity};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git, unique_name};

const SECRET: &str = "webhook-secret-for-tests";

fn start(
    repo: &TestRepo,
    envs: &[String],
    lease: &str,
    port: u16,
    log: &Path,
    who: &Identity,
) -> Guard {
    start_with(repo, envs, lease, port, log, who, &[])
}

/// [`start`] with `extra` flags.
fn start_with(
    repo: &TestRepo,
    envs: &[String],
    lease: &str,
    port: u16,
    log: &Path,
    who: &Identity,
    extra: &[&str],
) -> Guard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    cmd.args(["run", "--shard", "--lease-name", lease, "--branch", "main"]);
    cmd.args(extra);
    for env in envs {
        cmd.args(["--env", env]);
    }
    // A poll once an hour: every read below comes from the start, a
    // takeover or a webhook.
    cmd.args(["--interval", "1h", "--drift-interval", "1h"])
        .arg("--repo")
        .arg(repo.path())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&who.kubeconfig)
        .env("TENANTSYNC_WEBHOOK_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    Guard(cmd.spawn().expect("tenantsync run"))
}

/// A push webhook of the followed branch (GitLab's token).
async fn push(port: u16) {
    push_numbered(port, 0).await;
}

/// The same, with a body of its own (a delivery already seen is ignored).
async fn push_numbered(port: u16, n: usize) {
    let accepted = http(
        port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        &format!(r#"{{"ref":"refs/heads/main","total_commits_count":{n}}}"#),
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
}

/// `/status`'s `owns` and `identity`.
async fn owns(port: u16) -> Option<(BTreeSet<String>, String)> {
    let text = http(port, "GET", "/status", &[], "").await?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let owned = v["owns"]
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    Some((owned, v["identity"].as_str()?.to_string()))
}

async fn owned(port: u16) -> BTreeSet<String> {
    owns(port).await.map(|o| o.0).unwrap_or_default()
}

/// Whether the replicas on `x` and `y` hold two of the four environments
/// `all` each.
async fn split_two_and_two(x: u16, y: u16, all: &BTreeSet<String>) -> bool {
    let (x, y) = (owned(x).await, owned(y).await);
    x.len() == 2 && y.len() == 2 && x.union(&y).cloned().collect::<BTreeSet<_>>() == *all
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

fn commit(repo: &TestRepo, message: &str) -> String {
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", message]);
    git(repo.path(), &["rev-parse", "HEAD"])
}

/// A repository with four environments over the shipped base.
fn four_environments() -> (TestRepo, Vec<String>) {
    let repo = TestRepo::new("shard");
    let mut envs = vec![repo.env.clone()];
    for suffix in ["b", "c", "d"] {
        let env = format!("{}-{suffix}", repo.env);
        let dir = repo.path().join("environments").join(&env);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("environment.yaml"),
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n"
            ),
        )
        .expect("write");
        envs.push(env);
    }
    git(repo.path(), &["init", "-q", "-b", "main"]);
    commit(&repo, "four environments");
    (repo, envs)
}

/// [`four_environments`] with `workspaces` more in each (`t000`, ...), and
/// `spec` (lines of an environment's `spec`) added to all four.
fn four_environments_of(workspaces: usize, spec: &str) -> (TestRepo, Vec<String>) {
    let (repo, envs) = four_environments();
    for env in &envs {
        let dir = repo.path().join("environments").join(env);
        let file = dir.join("environment.yaml");
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, format!("{text}{spec}")).expect("write");
        std::fs::create_dir_all(dir.join("workspaces")).expect("mkdir");
        for i in 0..workspaces {
            let name = format!("t{i:03}");
            std::fs::write(
                dir.join("workspaces").join(format!("{name}.yaml")),
                format!(
                    "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 1\n"
                ),
            )
            .expect("write");
        }
    }
    commit(&repo, "many workspaces");
    (repo, envs)
}

/// Waits until one of `envs` has a workspace namespace (`t000-<env>`):
/// a replica's first syncs are under way.
async fn first_writes(envs: &[String]) {
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    wait_for(
        "the first replica to write",
        Duration::from_secs(60),
        async || {
            for env in envs {
                if namespaces
                    .get_opt(&format!("t000-{env}"))
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return true;
                }
            }
            false
        },
    )
    .await;
}

/// A routine hand-over is no failure: no apply error counted on the
/// replica at `port`, and the environments it handed over (`handed`) are
/// not Failed there.
async fn assert_no_failure_on(port: u16, handed: &BTreeSet<String>) {
    let metrics = http(port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics of the replica that handed over");
    let apply_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tenantsync_reconcile_errors_total{") && l.contains("apply"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(apply_errors.is_empty(), "{apply_errors:?}");
    for env in handed {
        let s = status(port, env).await.expect("status");
        assert_ne!(
            s["syncStatus"], "Failed",
            "{env} on the replica that handed it over: {s}"
        );
    }
}

#[tokio::test]
async fn sharded_replicas_split_environments_pass_webhooks_on_take_over_a_killed_one_and_share_with_a_new_one()
 {
    let (repo, envs) = four_environments();
    let all: BTreeSet<String> = envs.iter().cloned().collect();
    let logs = tempfile::tempdir().expect("tempdir");
    let lease = unique_name("shard");
    let ids: Vec<Identity> = ["a", "b", "c"]
        .iter()
        .map(|n| audit::identity(&format!("shard-{n}"), "cluster-admin", logs.path()))
        .collect();
    let ports = [free_port(), free_port(), free_port()];
    let log = |i: usize| logs.path().join(format!("{i}.log"));
    let log_text = |i: usize| std::fs::read_to_string(log(i)).unwrap_or_default();
    let leases: Api<Lease> =
        Api::namespaced(control_plane().client(User::Admin).await, SYSTEM_NAMESPACE);

    // 1. Two replicas split the four environments, two and two.
    let mut a = Some(start(&repo, &envs, &lease, ports[0], &log(0), &ids[0]));
    let mut b = Some(start(&repo, &envs, &lease, ports[1], &log(1), &ids[1]));
    wait_for(
        "two replicas to hold two environments each",
        Duration::from_secs(60),
        async || split_two_and_two(ports[0], ports[1], &all).await,
    )
    .await;
    let (owned_a, id_a) = owns(ports[0]).await.expect("status of a");
    let (owned_b, id_b) = owns(ports[1]).await.expect("status of b");
    // Each environment's Lease, `<lease-name>-<env>`, names its holder;
    // /readyz and the metrics say the same.
    for env in &envs {
        let expected = if owned_a.contains(env) { &id_a } else { &id_b };
        assert_eq!(
            holder(&leases, &environment_lease(&lease, env))
                .await
                .as_ref(),
            Some(expected)
        );
        for (port, mine) in [(ports[0], &owned_a), (ports[1], &owned_b)] {
            let series = format!("tenantsync_leader{{environment=\"{env}\"}}");
            assert_eq!(
                metric(port, &series).await,
                Some(if mine.contains(env) { 1.0 } else { 0.0 }),
                "{series}"
            );
        }
    }
    for (id, _) in [(&id_a, 0), (&id_b, 1)] {
        assert_eq!(
            holder(&leases, &member_lease(&lease, id)).await.as_ref(),
            Some(id),
            "the member Lease of {id}"
        );
    }
    // Each holder syncs its environments: every workspace's namespace.
    for env in &envs {
        let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
        let name = format!("contoso-{env}");
        wait_for(
            &format!("{name} to be applied"),
            Duration::from_secs(90),
            async || namespaces.get_opt(&name).await.ok().flatten().is_some(),
        )
        .await;
    }
    wait_for("both replicas ready", Duration::from_secs(60), async || {
        let mut ok = true;
        for (port, mine) in [(ports[0], &owned_a), (ports[1], &owned_b)] {
            let list: Vec<&str> = mine.iter().map(String::as_str).collect();
            ok &= http(port, "GET", "/readyz", &[], "")
                .await
                .is_some_and(|r| {
                    r.starts_with("HTTP/1.1 200")
                        && r.ends_with(&format!("owns: {}\n", list.join(", ")))
                });
        }
        ok
    })
    .await;
    // From here on, neither replica's share changes until the kill.
    let settled = audit::cursor();
    let settled_at = Instant::now();
    // The cost of sharding at rest: each replica LISTs the Leases every
    // 250 ms and renews what it holds every 2 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let window = settled_at.elapsed().as_secs_f64();
    for (name, id) in [("a", &ids[0]), ("b", &ids[1])] {
        let lease_requests: Vec<audit::Request> = id
            .requests_since(&settled)
            .into_iter()
            .filter(|r| r.user_agent.starts_with("tenantsync/") && r.resource == "leases")
            .collect();
        let lists = lease_requests.iter().filter(|r| r.verb == "list").count();
        eprintln!(
            "replica {name}: {lists} Lease LISTs and {} other Lease requests in {window:.1} s",
            lease_requests.len() - lists
        );
        assert!(
            (lists as f64) <= window * 4.0 + 2.0,
            "{lists} LISTs in {window:.1} s"
        );
    }

    // 2. A webhook sent to the replica that does not hold an environment is
    //    acted on by its holder within about a second.
    let target = owned_a.iter().next().expect("a holds one").clone();
    let extra = repo
        .path()
        .join("environments")
        .join(&target)
        .join("workspaces/tailspin.yaml");
    std::fs::create_dir_all(extra.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &extra,
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: tailspin}\nspec:\n  fhirServices:\n    - name: api\n      auth: { authority: \"https://login.microsoftonline.com/1f2e3d4c-5b6a-4789-8a9b-0c1d2e3f4a5b\", audience: \"https://tailspin-api.fhir.azurehealthcareapis.com\" }\n",
    )
    .expect("write");
    let revision = commit(&repo, "onboard tailspin");
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    let tailspin = format!("tailspin-{target}");
    let sent = Instant::now();
    push(ports[1]).await;
    // Acted on: the holder has read the new commit (its status's
    // lastSeenRevision); then applied: the new workspace's namespace.
    let mut seen = None;
    loop {
        if seen.is_none()
            && status(ports[0], &target)
                .await
                .is_some_and(|s| s["lastSeenRevision"] == revision.as_str())
        {
            seen = Some(sent.elapsed());
        }
        if namespaces.get_opt(&tailspin).await.ok().flatten().is_some() {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the webhook was not acted on\n{}",
            log_text(0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = sent.elapsed();
    let seen = seen.unwrap_or(took);
    eprintln!(
        "webhook to the non-holder -> new commit read by the holder: {seen:?}; its namespace applied: {took:?}"
    );
    // Acted on within a second (the issue's goal). Applied: 0.27 to 0.44 s
    // measured alone; 2 s allowed, as the whole suite on 2 cores measured
    // 1.29 s once.
    assert!(
        seen <= Duration::from_secs(1),
        "the holder read the commit of a webhook sent to the other replica after {seen:?}"
    );
    assert!(
        took <= Duration::from_secs(2),
        "the holder applied the commit of a webhook sent to the other replica after {took:?}"
    );

    // A burst of webhooks to the non-holder writes each Lease it passes
    // them on through once per round, rounds at least 250 ms apart, not
    // once per webhook.
    let burst = audit::cursor();
    let burst_started = Instant::now();
    for n in 1..=20 {
        push_numbered(ports[1], n).await;
    }
    let burst_took = burst_started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passed_on: Vec<audit::Request> = ids[1]
        .requests_since(&burst)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.resource == "leases")
        .filter(|r| r.verb == "update")
        .filter(|r| {
            owned_a
                .iter()
                .any(|e| r.name == environment_lease(&lease, e))
        })
        .collect();
    eprintln!(
        "20 webhooks to the non-holder: {} writes of the holder's Leases",
        passed_on.len()
    );
    // One round per 250 ms of the burst, one more after it; a renewal
    // between a round's read and write costs it one retry.
    let rounds = 2 + (burst_took.as_millis() / 250) as usize;
    assert!(
        !passed_on.is_empty()
            && passed_on.len() <= rounds * owned_a.len() + 2
            && passed_on.len() < 20,
        "{} writes of {} Leases for 20 webhooks in {burst_took:?}",
        passed_on.len(),
        owned_a.len()
    );

    // Only the holder of an environment writes it: after the webhook, which
    // made both replicas read the new commit for all four, neither wrote
    // into the namespaces of an environment it does not hold.
    for (id, mine) in [(&ids[0], &owned_a), (&ids[1], &owned_b)] {
        let foreign: Vec<audit::Request> = id
            .requests_since(&settled)
            .into_iter()
            .filter(|r| r.user_agent.starts_with("tenantsync/") && r.is_write())
            .filter(|r| {
                let place = if r.resource == "namespaces" {
                    &r.name
                } else {
                    &r.namespace
                };
                place != SYSTEM_NAMESPACE && !mine.iter().any(|e| place.ends_with(&format!("-{e}")))
            })
            .collect();
        assert!(foreign.is_empty(), "wrote outside its share: {foreign:#?}");
    }

    // 3. SIGKILL one: the other takes all four once their Leases expire.
    drop(a.take());
    let killed = Instant::now();
    wait_for(
        "the survivor to hold all four",
        LEASE_DURATION + RETRY_PERIOD * 2 + Duration::from_secs(10),
        async || owned(ports[1]).await == all,
    )
    .await;
    let took = killed.elapsed();
    eprintln!("takeover of a SIGKILLed replica's environments: {took:?}");
    // (Lease times are read to the whole second, the last renewal was at
    // most RETRY_PERIOD before the kill.)
    assert!(
        took + RETRY_PERIOD + Duration::from_secs(2) >= LEASE_DURATION,
        "took over after {took:?}, before the Leases of {LEASE_DURATION:?} expired"
    );
    // ... and writes them: it takes each one's lock.
    for env in &owned_a {
        let lock = tenantsync::cluster::lock::lease_name(env);
        wait_for(
            &format!("the survivor to take the lock of {env}"),
            Duration::from_secs(30),
            async || {
                holder(&leases, &lock)
                    .await
                    .is_some_and(|h| h.ends_with(&id_b))
            },
        )
        .await;
    }

    // The SIGKILLed replica never removed its member Lease: the survivor
    // deletes it once it has gone unrenewed for two Lease durations, so
    // killed replicas do not pile up in tenantsync-system.
    wait_for(
        "the killed replica's member Lease to be removed",
        LEASE_DURATION * 2 + Duration::from_secs(20),
        async || {
            leases
                .get_opt(&member_lease(&lease, &id_a))
                .await
                .is_ok_and(|l| l.is_none())
        },
    )
    .await;
    assert!(
        killed.elapsed() + RETRY_PERIOD + Duration::from_secs(2) >= LEASE_DURATION * 2,
        "a member Lease was removed {:?} after its replica was killed, before two Lease durations",
        killed.elapsed()
    );

    // 4. A third replica joining gets a share: the survivor hands two over.
    let mut c = Some(start(&repo, &envs, &lease, ports[2], &log(2), &ids[2]));
    wait_for(
        "the new replica to get a share",
        Duration::from_secs(60),
        async || {
            let (y, z) = (owned(ports[1]).await, owned(ports[2]).await);
            y.len() == 2 && z.len() == 2 && y.union(&z).cloned().collect::<BTreeSet<_>>() == all
        },
    )
    .await;

    // 5. SIGTERM: a replica leaving releases its Leases at once (no wait for
    //    the expiry) and removes its member Lease; the other takes over.
    let left = Instant::now();
    let code = b.take().expect("b").terminate().await;
    assert!(code.success(), "{code}\n{}", log_text(1));
    assert_eq!(holder(&leases, &member_lease(&lease, &id_b)).await, None);
    wait_for(
        "the last replica to hold all four",
        Duration::from_secs(10),
        async || owned(ports[2]).await == all,
    )
    .await;
    assert!(left.elapsed() < LEASE_DURATION, "{:?}", left.elapsed());
    let (_, id_c) = owns(ports[2]).await.expect("status of c");
    let code = c.take().expect("c").terminate().await;
    assert!(code.success(), "{code}\n{}", log_text(2));
    for env in &envs {
        assert_eq!(
            holder(&leases, &environment_lease(&lease, env)).await,
            None,
            "the Lease of {env} was not released"
        );
    }
    assert!(
        leases
            .get_opt(&member_lease(&lease, &id_c))
            .await
            .expect("get")
            .is_none(),
        "the member Lease was not removed"
    );
}

/// Issue 19 (staggered start): a replica started while another is in the
/// middle of its first syncs gets its share without waiting for them to
/// end: the other stops the sync in flight of each environment it hands
/// over at its next write (saying so), and the newcomer syncs it from
/// there. Every environment ends applied in full and recorded: a plan of
/// each changes nothing, and each holder reports it Synced.
#[tokio::test]
async fn a_replica_started_during_anothers_first_syncs_gets_its_share_without_waiting_for_them() {
    let (repo, envs) = four_environments_of(100, "");
    let all: BTreeSet<String> = envs.iter().cloned().collect();
    let logs = tempfile::tempdir().expect("tempdir");
    let lease = unique_name("stagger");
    let ids: Vec<Identity> = ["a", "b"]
        .iter()
        .map(|n| audit::identity(&format!("stagger-{n}"), "cluster-admin", logs.path()))
        .collect();
    let ports = [free_port(), free_port()];
    let log = |i: usize| logs.path().join(format!("{i}.log"));
    let log_text = |i: usize| std::fs::read_to_string(log(i)).unwrap_or_default();

    let started = Instant::now();
    let _a = start(&repo, &envs, &lease, ports[0], &log(0), &ids[0]);
    wait_for(
        "the first replica to hold all four",
        Duration::from_secs(60),
        async || owned(ports[0]).await == all,
    )
    .await;
    // Its first syncs are under way: a workspace namespace exists.
    first_writes(&envs).await;
    let joined = Instant::now();
    let _b = start(&repo, &envs, &lease, ports[1], &log(1), &ids[1]);
    let split = wait_for(
        "the newcomer to get its share",
        Duration::from_secs(30),
        async || split_two_and_two(ports[0], ports[1], &all).await,
    )
    .await;
    eprintln!(
        "replica started {:?} after the first: shares split {split:?} after it joined",
        joined - started
    );
    // The hand-over waits HAND_OVER_GRACE (4 s), then stops the syncs;
    // waiting for them to end took 21.6 s here.
    assert!(
        split < Duration::from_secs(15),
        "the newcomer got its share {split:?} after it joined"
    );
    // The first replica stopped the syncs it handed over, mid-way: the
    // newcomer did not wait for them.
    let handed = "this replica handed the environment over to another one";
    assert!(
        log_text(0).contains(handed),
        "no sync in flight was stopped for the hand-over:\n{}",
        log_text(0)
    );
    // A routine hand-over is no failure.
    let (mine_a, mine_b) = (owned(ports[0]).await, owned(ports[1]).await);
    assert_no_failure_on(ports[0], &mine_b).await;
    // Each holder finishes its environments: Synced, and nothing left to plan.
    for (port, mine) in [(ports[0], &mine_a), (ports[1], &mine_b)] {
        for env in mine {
            wait_for(
                &format!("{env} to be synced by its holder"),
                Duration::from_secs(240),
                async || {
                    status(port, env)
                        .await
                        .is_some_and(|s| s["syncStatus"] == "Synced")
                },
            )
            .await;
        }
    }
    eprintln!(
        "all four synced {:?} after the first replica started",
        started.elapsed()
    );
    for env in &envs {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["plan", "--env", env, "--context", "admin", "--repo"])
            .arg(repo.path())
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(["--detailed-exitcode", "--output", "json"])
            .output()
            .expect("plan");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{env} is not applied in full:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(2000)
                .collect::<String>()
        );
    }
}

/// The same stagger with every environment rolled out in steps (new
/// workspaces included): a hand-over stops a rollout step in flight, which
/// is no failure either (no apply error, not Failed on the replica that
/// let it go), and the newcomer applies the step again from the
/// inventory's record. Before, the stopped step was reported as a failed
/// sync on the replica that handed the environment over.
#[tokio::test]
async fn a_rollout_step_stopped_for_a_hand_over_is_no_failure_and_the_newcomer_applies_it() {
    let (repo, envs) = four_environments_of(
        100,
        "  syncPolicy:\n    rollout:\n      steps: [80%, 100%]\n      includeNewWorkspaces: true\n      pauseBetween: 1s\n      healthDeadline: 10m\n",
    );
    let all: BTreeSet<String> = envs.iter().cloned().collect();
    let logs = tempfile::tempdir().expect("tempdir");
    let lease = unique_name("stagger-rollout");
    let ids: Vec<Identity> = ["a", "b"]
        .iter()
        .map(|n| {
            audit::identity(
                &format!("stagger-rollout-{n}"),
                "cluster-admin",
                logs.path(),
            )
        })
        .collect();
    let ports = [free_port(), free_port()];
    let log = |i: usize| logs.path().join(format!("{i}.log"));
    let log_text = |i: usize| std::fs::read_to_string(log(i)).unwrap_or_default();

    // Two writes at a time for the first replica: its step 1 (84
    // workspaces in each of four environments) outlasts the newcomer's
    // start and the hand-over's grace on any machine.
    let _a = start_with(
        &repo,
        &envs,
        &lease,
        ports[0],
        &log(0),
        &ids[0],
        &["--max-writes-in-flight", "2"],
    );
    wait_for(
        "the first replica to hold all four",
        Duration::from_secs(60),
        async || owned(ports[0]).await == all,
    )
    .await;
    // Step 1 of its first rollouts is under way: a workspace namespace
    // exists.
    first_writes(&envs).await;
    let _b = start(&repo, &envs, &lease, ports[1], &log(1), &ids[1]);
    wait_for(
        "the newcomer to get its share",
        Duration::from_secs(30),
        async || split_two_and_two(ports[0], ports[1], &all).await,
    )
    .await;
    let stopped = "rollout step stopped part way for the hand-over";
    assert!(
        log_text(0).contains(stopped),
        "no rollout step in flight was stopped for the hand-over:\n{}",
        log_text(0)
    );
    let (mine_a, mine_b) = (owned(ports[0]).await, owned(ports[1]).await);
    assert_no_failure_on(ports[0], &mine_b).await;
    // Each holder applies step 1 of its environments (80% of the 104
    // workspaces, rounded up: 84), which then waits for health (no kubelet
    // here): step 1/2, Progressing, not Failed, 20 workspaces to go.
    for (port, mine) in [(ports[0], &mine_a), (ports[1], &mine_b)] {
        for env in mine {
            wait_for(
                &format!("{env}'s step 1 to be applied by its holder"),
                Duration::from_secs(240),
                async || {
                    status(port, env).await.is_some_and(|s| {
                        s["rollout"]["step"] == 1 && s["rollout"]["phase"] == "Progressing"
                    })
                },
            )
            .await;
            let s = status(port, env).await.expect("status");
            assert_eq!(s["syncStatus"], "OutOfSync", "{env}: {s}");
            assert_eq!(
                s["rollout"]["pending"].as_array().map(Vec::len),
                Some(20),
                "{env}: {s}"
            );
        }
    }
}
