//! The `books` service of the bookshelf: see `bookshelf_services::books_service`
//! for what it does and the flags it takes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::books_service::main()
}
