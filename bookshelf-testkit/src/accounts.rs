//! A small domain for behaviour tests: accounts that take deposits, and a
//! view that records exactly what it applied.

use std::collections::BTreeSet;

use bookshelf_core::{async_trait, Aggregate, DomainEvent, Envelope, EventId, Metadata, NewEvent, View};
use serde::{Deserialize, Serialize};

/// An account: opened once, then takes positive deposits.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether it was opened.
    pub opened: bool,
    /// The sum of its deposits.
    pub balance: i64,
}

/// What an account is asked to do.
#[derive(Debug, Clone)]
pub enum AccountCommand {
    /// Open it.
    Open,
    /// Deposit an amount.
    Deposit(i64),
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// It was opened.
    Opened,
    /// An amount was deposited.
    Deposited {
        /// The amount.
        amount: i64,
    },
}

impl DomainEvent for AccountEvent {}

/// Why an account refused a command.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    /// Opened twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// A deposit before opening.
    #[error("the account is not open")]
    NotOpen,
    /// A deposit of zero or less.
    #[error("a deposit must be positive, got {0}")]
    NotPositive(i64),
}

#[async_trait]
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.opened => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            AccountCommand::Deposit(_) if !self.opened => Err(AccountError::NotOpen),
            AccountCommand::Deposit(amount) if *amount <= 0 => Err(AccountError::NotPositive(*amount)),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.opened = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

/// Records every position it applied, so that a test can see a gap or a
/// repeat, and sums the deposits.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The positions applied, in order.
    pub applied: Vec<u64>,
    /// The sum of the deposits applied.
    pub total: i64,
}

impl View for Ledger {
    type Event = AccountEvent;
    fn apply(&mut self, event: Envelope<AccountEvent>) {
        self.applied.push(event.position.0);
        if let AccountEvent::Deposited { amount } = event.payload {
            self.total += amount;
        }
    }
}

impl Ledger {
    /// Whether every position was applied exactly once, in order.
    pub fn applied_each_once_in_order(&self) -> bool {
        self.applied.windows(2).all(|w| w[0] < w[1])
            && self.applied.iter().collect::<BTreeSet<_>>().len() == self.applied.len()
    }
}

/// [`AccountEvent`] as a fixed release reads it: an amount written as text
/// (`"7"`), which [`AccountEvent`] refuses, reads as the number. For
/// re-driving the dead letters the old code set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LenientAccountEvent {
    /// It was opened.
    Opened,
    /// An amount was deposited.
    Deposited {
        /// The amount.
        #[serde(deserialize_with = "number_or_text")]
        amount: i64,
    },
}

impl DomainEvent for LenientAccountEvent {}

fn number_or_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Number(i64),
        Text(String),
    }
    match Amount::deserialize(deserializer)? {
        Amount::Number(amount) => Ok(amount),
        Amount::Text(text) => text.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// The [`Ledger`] of the fixed release: the same state, saved the same way,
/// reading [`LenientAccountEvent`]s.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FixedLedger(pub Ledger);

impl View for FixedLedger {
    type Event = LenientAccountEvent;
    fn apply(&mut self, event: Envelope<LenientAccountEvent>) {
        self.0.applied.push(event.position.0);
        if let LenientAccountEvent::Deposited { amount } = event.payload {
            self.0.total += amount;
        }
    }
}

/// A `Deposited` event of `amount`, ready to append.
pub fn deposit(amount: i64) -> NewEvent {
    raw_event("Deposited", 1, &format!(r#"{{"amount":{amount}}}"#))
}

/// An event of type `event_type` with `payload` as its JSON, ready to append.
///
/// # Panics
/// When `payload` is not JSON (a mistake in the test).
pub fn raw_event(event_type: &str, schema_version: u32, payload: &str) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.into(),
        schema_version,
        metadata: Metadata::default(),
        payload: serde_json::value::RawValue::from_string(payload.into()).expect("test payloads are valid JSON"),
    }
}
