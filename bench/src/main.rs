fn main() {
    eprintln!("tether-bench: not built yet");
    std::process::exit(2);
}
