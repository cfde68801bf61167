//! The `authors` service: see `bookshelf_services::authors`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::authors::main()
}
