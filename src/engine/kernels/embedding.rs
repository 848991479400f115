//! Embedding lookup for the CPU, whose backward builds the table's gradient in one buffer.
//!
//! candle's lookup (`index_select`) answers the backward with a zeroed table-sized tensor, a
//! copy of it that `index_add` writes the rows into, and then its gradient store zero-fills and
//! adds one more table-sized tensor: for a BERT vocabulary (30,522 × 384, 47 MB) about six
//! passes over 47 MB a step for a gradient that touches a few thousand rows. Here the backward
//! zero-fills one table and adds the rows in, and a training pass takes the result directly
//! (`handover`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::handover::WeightGrads;
use crate::engine::kernels::linear::{contiguous_f32, hand_over};

/// Rows of `table` (vocabulary × width) for each of `ids`, as a tokens × width tensor.
pub fn lookup(table: &Tensor, ids: Arc<[u32]>, handover: Option<WeightGrads>) -> Result<Tensor> {
    table.contiguous()?.apply_op1(Lookup { ids, handover })
}

struct Lookup {
    ids: Arc<[u32]>,
    handover: Option<WeightGrads>,
}

impl Lookup {
    /// The table's width, after checking the table and every id against its vocabulary.
    fn width(&self, layout: &Layout) -> Result<usize> {
        let &[vocabulary, width] = layout.dims() else { candle_core::bail!("embedding lookup: expected a 2-d table") };
        if let Some(&id) = self.ids.iter().find(|&&id| id as usize >= vocabulary) {
            candle_core::bail!("embedding lookup: id {id} is outside the table's {vocabulary} rows")
        }
        Ok(width)
    }
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "embedding-lookup"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = self.width(layout)?;
        let table = contiguous_f32(storage, layout, "embedding lookup: the table")?;
        let mut rows = vec![0f32; self.ids.len() * width];
        rows.par_chunks_mut(width).zip(self.ids.par_iter()).for_each(|(row, &id)| {
            let start = id as usize * width;
            row.copy_from_slice(&table[start..start + width]);
        });
        Ok((CpuStorage::F32(rows), Shape::from((self.ids.len(), width))))
    }

    fn bwd(&self, table: &Tensor, _rows: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?.apply_op1_no_bwd(&LookupGrad { ids: &self.ids, vocabulary: table.dim(0)? })?;
        Ok(hand_over(&self.handover, table, grad))
    }
}

/// The table's gradient from the rows' gradient: each row added into its id's row.
struct LookupGrad<'a> {
    ids: &'a [u32],
    vocabulary: usize,
}

impl CustomOp1 for LookupGrad<'_> {
    fn name(&self) -> &'static str {
        "embedding-lookup-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[tokens, width] = layout.dims() else { candle_core::bail!("embedding grad: expected tokens × width") };
        if tokens != self.ids.len() {
            candle_core::bail!("embedding grad: {tokens} gradient rows for {} ids", self.ids.len())
        }
        let grad = contiguous_f32(storage, layout, "embedding grad: the gradient")?;
        let mut table = vec![0f32; self.vocabulary * width];
        for (row, &id) in grad.chunks_exact(width).zip(self.ids) {
            let start = id as usize * width;
            table[start..start + width].iter_mut().zip(row).for_each(|(t, g)| *t += g);
        }
        Ok((CpuStorage::F32(table), Shape::from((self.vocabulary, width))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Rows and the table's gradient (a repeated id summed) equal candle's `embedding`.
    #[test]
    fn lookup_and_its_gradient_match_candles_embedding() {
        let table = Var::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let ids: Arc<[u32]> = Arc::from([2u32, 0, 2, 1]);
        let weights = Tensor::new(&[[1f32, -1.0], [2.0, 0.5], [3.0, 1.0], [0.0, 4.0]], &Device::Cpu).unwrap();
        let ours = lookup(table.as_tensor(), ids.clone(), None).unwrap();
        let theirs = table.embedding(&Tensor::new(&*ids, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), theirs.to_vec2::<f32>().unwrap());
        let grad = |rows: &Tensor| {
            let grads = (rows * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            grads.get(table.as_tensor()).unwrap().to_vec2::<f32>().unwrap()
        };
        assert_eq!(grad(&ours), grad(&theirs));
        assert_eq!(grad(&ours), [[2.0, 0.5], [0.0, 4.0], [4.0, 0.0]]);
        let outside = lookup(table.as_tensor(), Arc::from([3u32]), None).unwrap_err().to_string();
        assert!(outside.contains("id 3 is outside the table's 3 rows"), "{outside}");
    }
}
