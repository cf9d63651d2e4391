//! The spectrum of the mix: a Hann-windowed FFT (rustfft) over the last `size` mono frames.

use std::collections::VecDeque;
use std::sync::Arc;

use rustfft::num_complex::Complex;
use syncra_node::audio::Spectrum;

/// Keeps the last `size` mono frames and turns them into a [`Spectrum`] on demand.
pub(crate) struct Analyser {
    fft: Arc<dyn rustfft::Fft<f32>>,
    window: Vec<f32>,
    /// `2 / Σ window`: a sine of amplitude `a` centred on a bin reads `a`.
    scale: f32,
    history: VecDeque<f32>,
    buffer: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    sample_rate: u32,
}

impl std::fmt::Debug for Analyser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyser")
            .field("size", &self.window.len())
            .finish()
    }
}

impl Analyser {
    /// An analyser over `size` frames (a power of two is fastest) at `sample_rate`.
    pub(crate) fn new(size: usize, sample_rate: u32) -> Analyser {
        let fft = rustfft::FftPlanner::new().plan_fft_forward(size);
        let window: Vec<f32> = (0..size)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / size as f32).cos())
            .collect();
        let scale = 2.0 / window.iter().sum::<f32>();
        Analyser {
            scratch: vec![Complex::default(); fft.get_inplace_scratch_len()],
            fft,
            window,
            scale,
            history: VecDeque::with_capacity(size),
            buffer: vec![Complex::default(); size],
            sample_rate,
        }
    }

    /// Add interleaved stereo frames.
    pub(crate) fn push(&mut self, interleaved: &[f32]) {
        let size = self.window.len();
        for f in interleaved.chunks_exact(2) {
            if self.history.len() == size {
                self.history.pop_front();
            }
            self.history.push_back((f[0] + f[1]) * 0.5);
        }
    }

    /// The spectrum of the last `size` frames, the window ending at frame `at_frame`; `None`
    /// until that many have been pushed.
    pub(crate) fn spectrum(&mut self, at_frame: u64, out: &mut Spectrum) -> bool {
        let size = self.window.len();
        if self.history.len() < size {
            return false;
        }
        for ((b, x), w) in self.buffer.iter_mut().zip(&self.history).zip(&self.window) {
            *b = Complex::new(x * w, 0.0);
        }
        self.fft
            .process_with_scratch(&mut self.buffer, &mut self.scratch);
        out.at_frame = at_frame;
        out.sample_rate = self.sample_rate;
        out.size = size as u32;
        out.bin_hz = self.sample_rate as f32 / size as f32;
        out.magnitudes.clear();
        out.magnitudes.extend(
            self.buffer[..size / 2]
                .iter()
                .map(|c| c.norm() * self.scale),
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spectrum_of(hz: f32, amplitude: f32) -> Spectrum {
        let mut a = Analyser::new(2048, 48_000);
        let frames: Vec<f32> = (0..4096)
            .flat_map(|i| {
                let s = amplitude * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin();
                [s, s]
            })
            .collect();
        a.push(&frames);
        let mut out = Spectrum {
            at_frame: 0,
            sample_rate: 0,
            size: 0,
            bin_hz: 0.0,
            magnitudes: Vec::new(),
        };
        assert!(a.spectrum(4096, &mut out));
        out
    }

    #[test]
    fn a_sine_on_a_bin_reads_its_amplitude_there() {
        // Bin 20 at 48 kHz / 2048 is 468.75 Hz.
        let s = spectrum_of(468.75, 0.5);
        let (bin, m) = s.peak().unwrap();
        assert_eq!(bin, 20);
        assert!((m - 0.5).abs() < 0.01, "{m}");
        assert_eq!(s.magnitudes.len(), 1024);
    }

    #[test]
    fn a_440_hz_tone_peaks_in_the_440_hz_bin() {
        let s = spectrum_of(440.0, 0.5);
        assert_eq!(s.peak().unwrap().0, s.bin_of(440.0));
        assert!(s.magnitudes[s.bin_of(2000.0)] < 0.01);
    }

    #[test]
    fn nothing_until_a_window_is_full() {
        let mut a = Analyser::new(2048, 48_000);
        a.push(&[0.0; 2000]);
        let mut out = spectrum_of(100.0, 0.1);
        assert!(!a.spectrum(1000, &mut out));
    }
}
