//! Weight gradients the fused layers hand over directly instead of through candle's backward.
//!
//! candle's backward files every gradient into its store by zero-filling a tensor of the
//! parameter's shape and adding the gradient to it: two extra passes over memory and a fresh
//! buffer per weight and step, single-threaded or on candle's element-wise pool. For a trained
//! weight the fused layer's gradient is already the whole answer (unless the weight is used
//! twice), so the layer keeps it here and tells candle there is none; [`WeightGrads::backward`]
//! then puts it in the store. On the Intel Xeon of issue 17 those passes were about a fifth of
//! the MLP step's backward (benches/RESULTS.md).

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

/// Gradients handed over by the fused layers of one training pass: (parameter, gradient).
#[derive(Debug, Clone, Default)]
pub struct WeightGrads(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl WeightGrads {
    fn kept(&self) -> MutexGuard<'_, Vec<(Tensor, Tensor)>> {
        // A panic while the lock was held left at worst a partial list; the backward that
        // panicked fails its step anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `grad` if `param` is a trained variable and returns None for candle; otherwise
    /// returns the gradient for candle's store (a weight computed from variables, such as an
    /// encoder's concatenated query/key/value weight, needs candle to carry it further).
    pub(crate) fn hand_over(&self, param: &Tensor, grad: Tensor) -> Option<Tensor> {
        if !param.is_variable() {
            return Some(grad);
        }
        self.kept().push((param.clone(), grad));
        None
    }

    /// The gradients of `loss`: candle's backward, then the handed-over gradients added to its
    /// store (summed with candle's where a weight was also used elsewhere).
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        for (param, grad) in self.kept().drain(..) {
            let total = match grads.remove(&param) {
                Some(other) => (other + grad)?,
                None => grad,
            };
            grads.insert(&param, total);
        }
        Ok(grads)
    }
}

impl Drop for WeightGrads {
    fn drop(&mut self) {
        // The last handle dropped with gradients kept: the pass's loss went through candle's
        // own backward, and the optimiser would silently skip those weights.
        let last = Arc::strong_count(&self.0) == 1;
        if last && !std::thread::panicking() {
            debug_assert!(self.kept().is_empty(), "weight gradients were handed over but never collected");
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn handed_over_gradients_reach_the_store_and_sum_with_candles() {
        let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let derived = (w.as_tensor() * 2.0).unwrap();
        let kept = WeightGrads::default();
        // Not a variable: candle keeps carrying it.
        assert!(kept.hand_over(&derived, derived.ones_like().unwrap()).is_some());
        assert!(kept.hand_over(w.as_tensor(), Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap()).is_none());
        // candle's part: d(sum(3w))/dw = 3.
        let loss = (w.as_tensor() * 3.0).unwrap().sum_all().unwrap();
        let grads = kept.backward(&loss).unwrap();
        assert_eq!(grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [13.0, 23.0]);
        assert!(kept.kept().is_empty());
    }
}
