//! The `rekey` binary: everything lives in the library; this only sets up the runtime.

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rekey: cannot start the async runtime: {e}");
            std::process::exit(rekey::exit::Status::Internal.code());
        }
    };
    let code = runtime.block_on(rekey::cli::main()).code();
    // Do not wait for in-flight SDK connections to wind down: the outcome is already printed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
