//! The checking load generator: see `bookshelf_services::load`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::load::main()
}
