//! pier-tests: the tests in `tests/` run the real binaries of the workspace
//! (`cargo test --workspace` builds them) as one system: the controller
//! streams snapshots, the agent and the proxy follow it.
