//! The gateway's OpenAPI document is right (SPEC OPS-4; issue 11): schemathesis runs all
//! its checks (server errors, undocumented statuses, response schemas and content types,
//! schema-valid requests refused, schema-violating requests accepted, methods, headers)
//! against a live gateway over three replicas, and any failure fails the test.

mod common;

use common::{Backend, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_a_live_gateway() {
    let cluster = TestCluster::start(Backend::Bulwark, 3).await;
    let gw = cluster.gateway("ap", &[]).await;
    match bulwark_testkit::schemathesis::run(&gw.url, &[], &[]).await {
        Ok(summary) => {
            let tail: Vec<&str> = summary.lines().rev().take(12).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Err(report) => panic!("schemathesis found problems:\n{report}"),
    }
}
