//! Dead letters re-driven on Kafka (tansu, from `scripts/test.sh`): the
//! check every store that keeps letters passes, with the letters in
//! `<topic>.dead-letters` and their fates in `<topic>.dead-letters.redrive`.

mod common;

use bookshelf_core::InMemoryViewStore;
use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaStore};
use common::{brokers, topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_in_a_topic_are_redriven_once() {
    let config = KafkaConfig::new(brokers(), topic("redrive")).create_topic(true);
    let store = KafkaStore::open(config.clone()).await.expect("the store");
    let letters = KafkaDeadLetters::open(&config).await.expect("the letters' topics");
    let listed = std::sync::Arc::new(KafkaDeadLetters::open(&config).await.expect("another handle"));
    bookshelf_testkit::dead_letters::redriven_once(
        store,
        std::sync::Arc::new(letters),
        InMemoryViewStore::new(),
        move |runner| {
            let listed = std::sync::Arc::clone(&listed);
            Box::pin(async move { listed.list(runner.as_deref()).await })
        },
    )
    .await;
}
