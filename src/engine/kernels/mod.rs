//! CPU kernels: candle custom ops with closed-form backward passes, for the layers whose
//! composed candle ops cost the most (see benches/RESULTS.md for what each bought).

pub mod activation;
pub mod attention;
pub mod conv;
pub mod embedding;
pub mod fastmath;
pub mod handover;
pub mod head_loss;
pub mod linear;
pub mod norm;
