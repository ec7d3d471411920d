//! The long help of each command (`--help`; `-h` is the short form): what a
//! man page's EXAMPLES, EXIT STATUS and ENVIRONMENT sections hold.

/// `tenantsync --version`: the package version and the Git commit it was
/// built from (build.rs; `unknown` when built outside a Git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TENANTSYNC_COMMIT"),
    ")"
);

pub const TOP: &str = "\
Commands, in the order a platform team meets them:
  validate, render       offline: check the declarations, print the objects
  plan, drift, status    read-only against a cluster (get and list only)
  sync                   make the cluster match an environment, once
  run                    the daemon that keeps it so (manifests in deploy/)
  completions            shell completion scripts

Exit status:
  0  success
  1  an error: invalid declarations (printed as FILE:LINE:COL), a cluster
     that refuses or cannot be reached, a failed sync
  2  plan and drift with --detailed-exitcode: there are changes

Environment:
  TENANTSYNC_KUBECONFIG  kubeconfig file, as --kubeconfig; else KUBECONFIG,
                         else ~/.kube/config, else the pod's service account
  TENANTSYNC_GIT_TOKEN   https token for a remote --repo (or
                         TENANTSYNC_GIT_TOKEN_FILE, a file holding it), user
                         TENANTSYNC_GIT_USERNAME (default git)
  TENANTSYNC_GIT_SSH_KEY ssh private key file for ssh remotes (passphrase in
                         TENANTSYNC_GIT_SSH_PASSPHRASE; user from the URL, else
                         TENANTSYNC_GIT_USERNAME); the host key must be in
                         TENANTSYNC_GIT_KNOWN_HOSTS (default ~/.ssh/known_hosts)
  SSL_CERT_FILE          PEM file of certificate authorities for https remotes
                         (a private CA); Git's GIT_SSL_CAINFO is not read
  XDG_CACHE_HOME         where remotes are cloned: $XDG_CACHE_HOME/tenantsync/git
                         (default ~/.cache/tenantsync/git)
  NO_COLOR               never colour the output
Secrets are read from the environment only, never from arguments, and are
never printed.

Examples:
  tenantsync validate
  tenantsync render --env qa | less
  tenantsync plan --env prod --output markdown --detailed-exitcode
  tenantsync sync --env qa --prune --wait
  tenantsync completions bash > ~/.local/share/bash-completion/completions/tenantsync

Documentation: README.md in the source repository.";

pub const VALIDATE: &str = "\
Exit status:
  0  every environment checked is valid
  1  problems were found (one line each on stderr), or the repository cannot
     be read

Examples:
  Check every environment of the repository in the current folder:
    tenantsync validate
  Check two environments of another checkout, for a CI annotation step:
    tenantsync validate --repo ../tenants --env qa --env prod --output json";

pub const RENDER: &str = "\
Exit status:
  0  rendered
  1  the environment is invalid (its errors on stderr, nothing on stdout) or
     cannot be read

Examples:
  tenantsync render --env qa
  tenantsync render --env prod --output json | jq '.[].kind' | sort | uniq -c";

pub const PLAN: &str = "\
Exit status:
  0  success (with --detailed-exitcode: and nothing would change)
  1  an error: invalid declarations (the cluster is not contacted), a cluster
     that refuses (\"permission denied by SERVER: cannot VERB RESOURCE\") or
     cannot be reached within seconds
  2  with --detailed-exitcode: there are changes

Environment:
  TENANTSYNC_KUBECONFIG, KUBECONFIG   the cluster (see tenantsync --help)
  TENANTSYNC_GIT_*                    credentials for a remote --repo
  NO_COLOR                            plain text output

Examples:
  What merging this branch would do to prod:
    tenantsync plan --env prod
  The same at a commit, read from Git without a checkout:
    tenantsync plan --env prod --rev origin/main
  A pull-request comment (examples/github/plan.yml), read-only credentials:
    tenantsync plan --env prod --kubeconfig ci-readonly.kubeconfig \\
        --output markdown --detailed-exitcode > plan.md
  Save the plan for review, to apply exactly it later with sync --plan:
    tenantsync plan --env prod --rev origin/main --out plan.json
  Only if the commit is signed by a trusted SSH key (README, Signed commits):
    tenantsync plan --env prod --rev origin/main --verify-signatures \\
        --allowed-signers allowed_signers";

pub const DRIFT: &str = "\
Exit status:
  0  success (with --detailed-exitcode: and no drift)
  1  an error, as for plan
  2  with --detailed-exitcode: something drifted

Environment: as for plan.

Examples:
  tenantsync drift --env prod
  tenantsync drift --env prod --output json | jq '.changes[] | select(.action != \"unchanged\")'";

pub const SYNC: &str = "\
Exit status:
  0  everything applied (and, with --wait, is healthy)
  1  anything else: a conflict, an object the server refused, a prune
     stopped by its guard (nothing is changed then), a permission the
     credentials lack (reported once per verb and kind), an API server that
     stopped answering (the sync stops after 3 consecutive failures), the
     environment's lock held by another writer past --lock-timeout (nothing
     is changed then), an unhealthy object or the --timeout passed; an
     invalid workspace (nothing is applied; with --skip-invalid the others
     are, and it is listed as skipped), a sync window of the environment
     closed (syncPolicy.windows; nothing is changed then, unless
     --ignore-windows); with --plan, a plan file that is not one, was
     edited, is of another revision or environment, or is stale (the
     objects that changed since are named): nothing is applied then

One writer per environment: a sync takes the Lease
tenantsync-system/tenantsync-sync-<env> (a daemon's leader holds it while it
runs) and waits, naming the holder, while another writer has it. A removed
workspace's namespace holding objects tenantsync did not make is kept (they
are named) unless --prune-foreign.

Environment: as for plan.

Examples:
  See what the API server would say, writing nothing:
    tenantsync sync --env qa --dry-run
  Apply, delete what is no longer declared, wait for the rollout:
    tenantsync sync --env qa --prune --wait --timeout 10m
  Remove a workspace: its namespace goes too, so the guard must be lifted:
    tenantsync sync --env qa --prune --allow-mass-prune
  In CI, give up after a minute if someone else is syncing:
    tenantsync sync --env qa --prune --lock-timeout 1m
  Onboard or repair one tenant without touching the others:
    tenantsync sync --env prod --workspace contoso --prune
  Apply exactly a saved plan (plan --out); nothing if the cluster changed since:
    tenantsync sync --env prod --plan plan.json
  Apply every valid workspace while one is broken (exit 1, naming it):
    tenantsync sync --env prod --skip-invalid";

pub const RUN: &str = "\
Exit status:
  0  stopped by SIGTERM or Ctrl-C after the reconcile in flight
  1  could not start: an invalid --config (FILE:LINE:COL errors), no
     environment or repository, the listen address taken, the cluster
     unreachable for leader election

Environment:
  TENANTSYNC_WEBHOOK_SECRET  shared secret of POST /hooks/git (GitHub's
                             X-Hub-Signature-256 or GitLab's X-Gitlab-Token);
                             without it the endpoint is off
  TENANTSYNC_GIT_TOKEN(_FILE), TENANTSYNC_GIT_USERNAME, TENANTSYNC_GIT_SSH_KEY,
  TENANTSYNC_GIT_SSH_PASSPHRASE, TENANTSYNC_GIT_KNOWN_HOSTS, SSL_CERT_FILE
                             credentials and trust for the remote
  XDG_CACHE_HOME             the remote's clone: $XDG_CACHE_HOME/tenantsync/git
  TENANTSYNC_KUBECONFIG, KUBECONFIG  the cluster; in a pod, its service account
  RUST_LOG                   log filter (default info), e.g. tenantsync=debug

Endpoints (--listen):
  GET /healthz   200 while the process runs (liveness)
  GET /readyz    200 once every environment was reconciled once (readiness);
                 with --shard a line `owns: ENV, ...`
  GET /status    JSON: per environment the sync status, revisions, last error
                 (URLs' host:port and Kubernetes identities left out)
  GET /metrics   OpenMetrics
  GET /          the read-only status page (unless --ui=false): environments;
                 /environments/ENV and /environments/ENV/workspaces/NAME
Endpoint (--webhook-listen, or --listen without it):
  POST /hooks/git  push webhook: a verified push of the followed branch, not
                   delivered in the last hour, reads the repository now
                   (with --shard, the holders of the other environments are
                   told through their Leases and read it within a second);
                   bodies up to 25 MB, streamed

Examples:
  Follow a branch, prune and heal, as deploy/ runs it in a cluster:
    tenantsync run --config /etc/tenantsync/tenantsync.yaml
  On a laptop against a local folder (edits are applied within a second):
    tenantsync run --repo . --env dev --self-heal --prune
  Two replicas: only the holder of the Lease writes:
    tenantsync run --config tenantsync.yaml --leader-elect
  Replicas sharing the environments, a Lease each (as deploy/ runs it):
    tenantsync run --config tenantsync.yaml --shard";

pub const STATUS: &str = "\
Exit status:
  0  shown
  1  the environment was never synced to this cluster (no inventory), or the
     cluster refuses or cannot be reached

Environment: TENANTSYNC_KUBECONFIG, KUBECONFIG (see tenantsync --help).

Examples:
  tenantsync status --env prod
  tenantsync status --env prod --output json | jq -r '.\"status.syncStatus\"'";

pub const APPROVE: &str = "\
Exit status:
  0  approved: the daemon applies the revision within about a second (at once
     when its sync window is open)
  1  refused: nothing is pending, the revision is not the pending one (stale),
     the credential may not patch configmap tenantsync-system/approval-<env>,
     or the cluster cannot be reached

Environment: TENANTSYNC_KUBECONFIG, KUBECONFIG (see tenantsync --help).

Examples:
  tenantsync status --env prod        # the pending revision and its plan
  tenantsync approve --env prod --revision 3f2c1e7
  tenantsync approve --env prod --revision 3f2c1e7 --by \"Dana (CAB-1234)\"";

pub const COMPLETIONS: &str = "\
Exit status: 0.

Examples:
  bash:  tenantsync completions bash > ~/.local/share/bash-completion/completions/tenantsync
  zsh:   tenantsync completions zsh > \"${fpath[1]}/_tenantsync\"
  fish:  tenantsync completions fish > ~/.config/fish/completions/tenantsync.fish";
