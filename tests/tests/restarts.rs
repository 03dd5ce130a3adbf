//! Short form of the agent's restart soak (see `detector_tests::agent_soak::restarts`;
//! the long form, 100 restarts, is `cargo xtask soak --agent`): `detector watch`
//! SIGKILLed and restarted 10 times while a target serves requests, as root.
use detector_tests::{agent_soak::restarts, require_bpf_privileges};

#[test]
fn agent_sigkilled_and_restarted_while_targets_serve() {
    require_bpf_privileges();
    let o = restarts(10).unwrap_or_else(|e| panic!("{e:#}"));
    println!("{}", o.summary());
    assert_eq!(o.restarts, 10);
    assert!(o.requests > 0);
    assert_eq!(o.failed_requests, 0, "{}", o.summary());
}
