//! Tests of the shared UDP port; uTP's and the batch receive's are beside their code.

mod udp;
