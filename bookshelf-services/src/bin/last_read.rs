//! The `last_read` service: see `bookshelf_services::last_read`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::last_read::main()
}
