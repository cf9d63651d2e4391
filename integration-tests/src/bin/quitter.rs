//! A test node that exits at once with code 3, before it ever joins: a crash loop.

fn main() {
    eprintln!("quitter: exiting at once");
    std::process::exit(3);
}
