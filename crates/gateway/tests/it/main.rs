//! Integration tests of the Gateway against a real DAG Manager, both in process on port 0.

mod bad_input;
mod health;
mod outage;
mod submit;
mod support;
