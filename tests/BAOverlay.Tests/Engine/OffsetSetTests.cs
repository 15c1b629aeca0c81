using BAOverlay.Engine;

namespace BAOverlay.Tests.Engine;

/// <summary>SpaceAllocator's free lists against SortedSet as the model: random adds and removes (duplicates and
/// absent values included), checking count, smallest and largest after each.</summary>
public class OffsetSetTests
{
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void BehavesAsASortedSet(int seed)
    {
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        var set = new OffsetSet();
        var model = new SortedSet<long>();
        for (int step = 0; step < 20_000; step++)
        {
            long value = random.Next(0, step % 1000 < 500 ? 64 : 4096) * 4096L;
            bool add = random.Next(3) != 0;
            Assert.That(add ? set.Add(value) : set.Remove(value), Is.EqualTo(add ? model.Add(value) : model.Remove(value)), $"step {step}");
            Assert.That(set.Count, Is.EqualTo(model.Count), $"step {step}");
            if (model.Count > 0)
            {
                Assert.That((set.Min, set.Max), Is.EqualTo((model.Min, model.Max)), $"step {step}");
            }
        }
        Assert.That(() => new OffsetSet().Min, Throws.InvalidOperationException);
    }
}
