//! I/O buffers and the per-worker pool that recycles them, so active connections borrow memory and idle
//! ones hold none.

/// A linear byte buffer: bytes `[start, end)` are pending; reading appends at `end`, consumers advance
/// `start`. It compacts (moves pending bytes to the front) only when it runs out of room at the end.
#[derive(Debug)]
pub struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer of `size` bytes outside any pool (long-lived connections such as replication links).
    pub fn new(size: usize) -> Self {
        Buffer::with_capacity(size)
    }

    fn with_capacity(size: usize) -> Self {
        Buffer {
            data: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Pending bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Room left for more bytes, after compacting if that is what it takes.
    pub fn space(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.compact();
        }
        &mut self.data[self.end..]
    }

    /// Bytes that can still be added (counting what compaction would free).
    #[inline]
    pub fn free(&self) -> usize {
        self.data.len() - self.len()
    }

    /// Marks `n` bytes written into `space()` as pending.
    #[inline]
    pub fn fill(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end += n;
    }

    /// Drops `n` pending bytes from the front.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends bytes; returns how many fitted.
    pub fn extend(&mut self, bytes: &[u8]) -> usize {
        let space = self.space();
        let n = space.len().min(bytes.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.fill(n);
        n
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn compact(&mut self) {
        self.data.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Grows to `size` bytes keeping pending bytes (used for the rare head larger than a buffer).
    pub fn grow(&mut self, size: usize) {
        if size <= self.data.len() {
            return;
        }
        let mut data = vec![0u8; size].into_boxed_slice();
        let len = self.len();
        data[..len].copy_from_slice(self.data());
        self.data = data;
        self.start = 0;
        self.end = len;
    }
}

/// A worker's free list of buffers of one size. Not shared between threads, so it needs no lock.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    free: Vec<Buffer>,
    max_free: usize,
    /// Buffers currently lent out (for stats and leak checks).
    lent: usize,
}

impl BufferPool {
    pub fn new(size: usize, max_free: usize) -> Self {
        BufferPool {
            size,
            free: Vec::with_capacity(max_free.min(4096)),
            max_free,
            lent: 0,
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// An empty buffer of the pool's size; allocates only when the free list is empty.
    pub fn get(&mut self) -> Buffer {
        self.lent += 1;
        self.free
            .pop()
            .unwrap_or_else(|| Buffer::with_capacity(self.size))
    }

    /// Returns a buffer. Grown or surplus buffers are freed rather than kept.
    pub fn put(&mut self, mut buf: Buffer) {
        debug_assert!(self.lent > 0);
        self.lent = self.lent.saturating_sub(1);
        if buf.capacity() == self.size && self.free.len() < self.max_free {
            buf.clear();
            self.free.push(buf);
        }
    }

    pub fn lent(&self) -> usize {
        self.lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_consume_and_compact_keep_bytes_in_order() {
        let mut pool = BufferPool::new(8, 4);
        let mut b = pool.get();
        assert_eq!(b.extend(b"abcdef"), 6);
        b.consume(4);
        assert_eq!(b.data(), b"ef");
        // 2 bytes left at the end, 4 reclaimable at the front: space() compacts only when the end is full.
        assert_eq!(b.extend(b"gh"), 2);
        assert_eq!(b.space().len(), 4);
        assert_eq!(b.extend(b"ijklmn"), 4);
        assert_eq!(b.data(), b"efghijkl");
        assert_eq!(b.free(), 0);
        b.consume(8);
        assert!(b.is_empty());
        pool.put(b);
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn grown_buffers_are_not_recycled() {
        let mut pool = BufferPool::new(8, 4);
        let mut b = pool.get();
        b.extend(b"12345678");
        b.grow(16);
        assert_eq!(b.data(), b"12345678");
        assert_eq!(b.free(), 8);
        pool.put(b);
        let again = pool.get();
        assert_eq!(again.capacity(), 8);
    }
}
