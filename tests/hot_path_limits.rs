//! The hot path allocates nothing per request in steady state with a node-local rate limit and a deny
//! rule in force: once the client's bucket exists, each request is a hash, a lock-free lookup and a
//! compare-and-swap (a cluster-wide limit allocates one counter per key and window, not per request).
//!
//! The balancer runs in this process under a counting global allocator (see `steady_state`); the access
//! log is off. One test per file: libtest's own threads must stay quiet.

mod steady_state;

#[global_allocator]
static GLOBAL: steady_state::Counting = steady_state::Counting;

const REQUEST: &[u8] = b"GET /hot HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\n\r\n";

#[test]
fn steady_state_rate_limited_requests_allocate_nothing() {
    steady_state::assert_steady_state_allocates_nothing(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\nrate_limits = [\"per_client\"]\n\
         [access_log]\nenabled = false\n\
         [[rate_limits]]\nname = \"per_client\"\nkey = \"address\"\nrate = 100000000\nper = \"1s\"\n\
         [deny]\nrules = [{ requests_per_sec = 100000000, ban = \"1m\" }]\n\
         [clusters.app]\nbackends = [{ address = \"{backend}\" }]\n",
        REQUEST,
        |_| REQUEST.to_vec(),
    )
    .shutdown(std::time::Duration::ZERO);
}
