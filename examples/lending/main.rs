//! The `lending` service of the bookshelf: see `bookshelf_services::lending`
//! for what it does and the flags it takes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::lending::main()
}
