//! The `lending` service: see `bookshelf_services::lending`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::lending::main()
}
