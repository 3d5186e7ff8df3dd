//! The hot path allocates nothing per request in steady state: plain keep-alive requests.
//!
//! The balancer runs in this process under a counting global allocator (see `steady_state`); the access
//! log is off. One test per file: libtest's own threads must stay quiet.

mod steady_state;

#[global_allocator]
static GLOBAL: steady_state::Counting = steady_state::Counting;

const REQUEST: &[u8] = b"GET /hot HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\n\r\n";

#[test]
fn steady_state_keep_alive_requests_allocate_nothing() {
    steady_state::assert_steady_state_allocates_nothing(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\n\
         [access_log]\nenabled = false\n\
         [clusters.app]\nbackends = [{ address = \"{backend}\" }]\n",
        REQUEST,
        |_| REQUEST.to_vec(),
    )
    .shutdown(std::time::Duration::ZERO);
}
