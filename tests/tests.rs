//! Integration tests: one binary, one shared control plane per run.

#![forbid(unsafe_code)]
// Test code may panic on setup failures: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench_smoke;
mod blast_radius;
mod change_control_cluster;
mod ci_example;
mod cli_meta;
mod concurrency_cluster;
mod container_image;
mod control_plane;
mod control_plane_script;
mod daemon_e2e;
mod daemon_http;
mod daemon_status;
mod deploy_cluster;
mod faults_cluster;
mod fuzz;
mod git_source;
mod git_transports;
mod golden;
mod health_cluster;
mod ownership_cluster;
mod plan_cluster;
mod platform_cluster;
mod print_golden;
mod properties;
mod readme_commands;
mod rollback_cluster;
mod rollout_cluster;
mod saved_plan_cluster;
mod shard_cluster;
mod signed_commits;
mod status_page;
mod support;
mod sync_cluster;
mod tenancy_cluster;
mod validate_cli;
mod watch_drift;
