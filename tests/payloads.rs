//! Numeric payloads through real worker processes, bit for bit: vectors of
//! `f64` and `f32` (which travel as one copy each way) at their awkward
//! values and lengths, as whole arguments, as results, and as a field of a
//! struct (which goes through serde).

use multiproc::{Pool, worker};
use serde::{Deserialize, Serialize};

/// Returns `v` with every element negated (NaN payloads and all: a sign
/// flip keeps the other bits).
#[worker]
fn negate64(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| -x).collect()
}

#[worker]
fn negate32(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| -x).collect()
}

/// The bits of each element, computed in the worker.
#[worker]
fn bits64(v: Vec<f64>) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    name: String,
    values: Vec<f64>,
}

#[worker]
fn rename(r: Record) -> Record {
    Record {
        name: r.name.to_uppercase(),
        values: r.values,
    }
}

fn awkward() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::from_bits(0x7ff8_0000_dead_beef),
        f64::from_bits(0xfff0_0000_0000_0001),
    ];
    v.extend((0..100_003).map(|i| f64::from(i) * 0.25 - 11.0));
    v
}

fn negated_bits64(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| (-x).to_bits()).collect()
}

#[multiproc::test]
fn float_vectors_come_back_bit_for_bit() {
    let pool = Pool::new(2).unwrap();
    let all = awkward();
    // Empty, odd and large lengths; the large one goes through the
    // workers' shared buffers.
    for n in [0, 1, 3, 10, 1001, all.len()] {
        let v = all[..n].to_vec();
        let back = pool.apply(negate64, v.clone()).unwrap();
        let got: Vec<u64> = back.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, negated_bits64(&v), "{n} f64s");
        // What the worker received, as the worker saw it.
        let seen = pool.apply(bits64, v.clone()).unwrap();
        assert_eq!(
            seen,
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{n} f64s sent"
        );

        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let back = pool.apply(negate32, v32.clone()).unwrap();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v32.iter().map(|x| (-x).to_bits()).collect::<Vec<_>>(),
            "{n} f32s"
        );
    }
    // Many vectors in one map: items of a batch, one after the other.
    let inputs: Vec<Vec<f64>> = (0..200).map(|k| all[k..k + k % 17].to_vec()).collect();
    let outputs = pool.map(negate64, inputs.clone()).unwrap();
    for (input, output) in inputs.iter().zip(&outputs) {
        assert_eq!(
            output.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            negated_bits64(input)
        );
    }
}

#[multiproc::test]
fn a_struct_mixing_a_string_and_floats_round_trips() {
    let pool = Pool::new(2).unwrap();
    let r = Record {
        name: "naïve".to_owned(),
        values: awkward(),
    };
    let back = pool.apply(rename, r.clone()).unwrap();
    assert_eq!(back.name, "NAÏVE");
    assert_eq!(
        back.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        r.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}
