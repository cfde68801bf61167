//! `bookshelf`, the operator's command line: see `bookshelf_services::cli`.

fn main() -> std::process::ExitCode {
    bookshelf_services::cli::main()
}
