//! The `changes` service: see `bookshelf_services::changes`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::changes::main()
}
