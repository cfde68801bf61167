//! The `changes` service of the bookshelf: see `bookshelf_services::changes`
//! for what it does and the flags it takes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::changes::main()
}
