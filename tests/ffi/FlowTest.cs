// The FFI flow test through the C# binding (RoomcastClient.cs) under Mono, against the relay
// run.sh started (RC_SERVER, RC_CA, RC_HELPER). Same flow as flow.c; every check throws, and
// an uncaught exception exits non-zero with what failed.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using Roomcast;

static class FlowTest
{
    static int passed;
    static string helper, server, caPem;

    static void Check(bool ok, string what)
    {
        if (!ok) throw new Exception("FAIL: " + what);
        passed++;
    }

    static string Helper(string args, Dictionary<string, string> env = null) { return Run(helper, args, env); }

    // Runs a script to its end (with env on top of this process's); its output.
    static string Run(string file, string args, Dictionary<string, string> env = null)
    {
        var psi = new ProcessStartInfo(file, args) { UseShellExecute = false, RedirectStandardOutput = true };
        if (env != null) foreach (var kv in env) psi.EnvironmentVariables[kv.Key] = kv.Value;
        using (var p = Process.Start(psi))
        {
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Check(p.ExitCode == 0, Path.GetFileName(file) + " " + args);
            return output.Trim();
        }
    }

    static RoomcastClient Open(string token, uint queue = 0)
    {
        return new RoomcastClient(new RoomcastOptions { Server = server, CaPem = caPem, Token = token, EventQueue = queue });
    }

    // Events taken while waiting for a reply, handed out first.
    static readonly Queue<Event> stash = new Queue<Event>();

    static Event Next(RoomcastClient c)
    {
        if (stash.Count > 0) return stash.Dequeue();
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 60000)
        {
            var e = c.Wait(200);
            if (e != null) return e;
        }
        throw new Exception("FAIL: no event within a minute");
    }

    static Event Expect(RoomcastClient c, EventKind kind)
    {
        var e = Next(c);
        Check(e.Kind == kind, "expected " + kind + ", got " + e);
        return e;
    }

    static Event Reply(RoomcastClient c, ulong id, Status want)
    {
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 60000)
        {
            var e = c.Wait(200);
            if (e == null) continue;
            if (e.Kind == EventKind.Reply && e.RequestId == id)
            {
                Check(e.Status == want, "request " + id + ": expected " + want + ", got " + e);
                if (want != Status.Ok) Check(e.Text.Length > 0, "a refusal carries a message");
                return e;
            }
            stash.Enqueue(e);
        }
        throw new Exception("FAIL: no reply to " + id);
    }

    static void ExpectMessage(RoomcastClient c, string room, string from, string body)
    {
        var m = Expect(c, EventKind.Message).Message;
        Check(m.Room == room && m.From == from && m.Text == body, "message " + m.From + ": " + m.Text);
    }

    static void Flow()
    {
        Helper("room cs-lobby");
        Helper("room cs-other");
        Helper("room cs-doomed");
        for (int i = 1; i <= 3; i++) Helper("pub cs-lobby bob h" + i);
        using (var c = Open(Helper("token alice")))
        {
            Check(Expect(c, EventKind.Connected).User == "alice", "connected as alice");
            var joined = Reply(c, c.Join("cs-lobby", 10), Status.Ok);
            Check(joined.LastSeq == 3 && joined.Messages.Length == 3 && joined.Info.Id == "cs-lobby", "join with history");
            for (int i = 0; i < 3; i++) Check(joined.Messages[i].Text == "h" + (i + 1), "history in order");
            Check(Reply(c, c.Join("cs-missing"), Status.RoomNotFound).Text.Contains("ROOM_NOT_FOUND"), "room not found");
            Reply(c, c.Send("cs-other", "chat", "x"), Status.NotInRoom);
            Check(Reply(c, c.Send("cs-lobby", "chat", "from-cs"), Status.Ok).Seq == 4, "send");
            ExpectMessage(c, "cs-lobby", "alice", "from-cs");
            Check(Reply(c, c.Send("cs-lobby", "chat", "low-cs", true), Status.Ok).Seq == 5, "low send");
            Check(Expect(c, EventKind.Message).Message.Class == MessageClass.Low, "own low message");
            for (int i = 1; i <= 5; i++) Helper("pub cs-lobby bob n" + i);
            for (int i = 1; i <= 5; i++)
            {
                var m = Expect(c, EventKind.Message).Message;
                Check(m.Text == "n" + i && m.Seq == (ulong)(5 + i), "pub in order: " + m.Text + " seq " + m.Seq);
            }
            Helper("publow cs-lobby bob low-native");
            var low = Expect(c, EventKind.Message).Message;
            Check(low.Datagram && low.Class == MessageClass.Low && low.Text == "low-native", "a datagram");
            Reply(c, c.Join("cs-doomed"), Status.Ok);
            Helper("destroy cs-doomed");
            var destroyed = Expect(c, EventKind.RoomDestroyed);
            Check(destroyed.Room == "cs-doomed" && destroyed.Reason == (uint)DestroyReason.Manual, "destroyed");
            Helper("ban cs-lobby alice");
            for (int seen = 0; seen < 2; seen++)
            {
                var e = Next(c);
                if (e.Kind == EventKind.Kicked) Check(e.Room == "cs-lobby" && e.Reason == (uint)KickReason.Banned, "kicked");
                else Check(e.Kind == EventKind.Banned && e.Users[0] == "alice", "told of the ban: " + e);
            }
            // The other requests, through the binding's array marshaling.
            Helper("room cs-attrs");
            Reply(c, c.Join("cs-attrs"), Status.Ok);
            var info = Reply(c, c.RoomInfo("cs-attrs"), Status.Ok).Info;
            Check(info.Id == "cs-attrs" && info.MemberCount == 1 && info.Members.Length == 1 && info.Members[0] == "alice", "room info");
            var set = Reply(c, c.SetAttributes("cs-attrs", new Dictionary<string, string> { { "score", "3:1" } }), Status.Ok);
            Check(set.Results.Length == 1 && set.Results[0].Key == "score" && set.Results[0].Status == Status.Ok, "set");
            var changed = Expect(c, EventKind.AttributeChanged).Attribute;
            Check(changed.Key == "score" && changed.Value == "3:1" && changed.Owner == "alice", "changed");
            var all = Reply(c, c.GetAttributes("cs-attrs"), Status.Ok);
            Check(all.Attributes.Length == 1 && all.Attributes[0].Value == "3:1", "get all");
            var del = Reply(c, c.DeleteAttributes("cs-attrs", new[] { "score", "missing" }), Status.Ok);
            Check(del.Results.Length == 2 && del.Results[0].Status == Status.Ok && del.Results[1].Status == Status.AttrNotFound, "delete, per key");
            Check(Expect(c, EventKind.AttributeRemoved).Attribute.Key == "score", "removed");
            ulong oops = Reply(c, c.Send("cs-attrs", "chat", "oops"), Status.Ok).Seq;
            ExpectMessage(c, "cs-attrs", "alice", "oops");
            Reply(c, c.Recall("cs-attrs", oops), Status.Ok);
            Check(Expect(c, EventKind.Recalled).Seq == oops, "recalled");
            var page = Reply(c, c.History("cs-attrs", 0, 10), Status.Ok);
            Check(page.Messages.Length == 1 && page.Messages[0].Recalled && page.Messages[0].Seq == oops, "history");
            Reply(c, c.Leave("cs-attrs"), Status.Ok);
            Reply(c, c.Send("cs-attrs", "chat", "x"), Status.NotInRoom);
            // 1 MiB: refused before it is sent; the connection lives on.
            Reply(c, c.Send("cs-other", "chat", new byte[1 << 20]), Status.TooLarge);
            Reply(c, c.Ping(), Status.Ok);
            c.Close();
            try { c.Ping(); Check(false, "a request after close throws"); }
            catch (RoomcastException e) { Check(e.Status == Status.Closed, "closed: " + e.Message); }
            Check(Expect(c, EventKind.Closed).Status == Status.Ok, "CLOSED is last");
            Check(c.Poll() == null && c.IsClosed, "nothing after CLOSED");
        }
        Console.WriteLine("flow: ok");
    }

    static void Unauthorized()
    {
        using (var c = Open("not-a-token"))
        {
            ulong id = c.Ping();
            var r = Expect(c, EventKind.Reply);
            Check(r.RequestId == id && r.Status == Status.Unauthorized, "a request while connecting: " + r);
            var closed = Expect(c, EventKind.Closed);
            Check(closed.Status == Status.Unauthorized && closed.Text.Contains("UNAUTHORIZED"), "unauthorized: " + closed);
        }
        Console.WriteLine("unauthorized: ok");
    }

    static void Misuse()
    {
        // The raw ABI, as a binding could misuse it: each a status code, no crash.
        Native.RcEvent raw;
        Check(Native.rc_client_poll(IntPtr.Zero, out raw) == Status.InvalidHandle, "null handle");
        Check(Native.rc_client_poll(new IntPtr(0x7fff1234), out raw) == Status.InvalidHandle, "made-up handle");
        Check(Native.rc_client_join(IntPtr.Zero, Native.Z("r"), -1, out ulong id0) == Status.InvalidHandle && id0 == 0, "join on null");
        var c = Open(Helper("token dave"));
        Check(Native.rc_client_join(GetHandle(c), new byte[] { 0xff, 0xfe, 0 }, -1, out ulong id1) == Status.InvalidUtf8, "invalid UTF-8");
        Check(Native.rc_client_join(GetHandle(c), null, -1, out id1) == Status.InvalidArgument, "null room");
        Check(Native.rc_client_wait(GetHandle(c), out raw, 60000) == Status.Ok && raw.Kind == EventKind.Connected, "connected");
        var copy = raw;
        Check(Native.rc_event_free(ref raw) == Status.Ok, "free");
        Check(Native.rc_event_free(ref raw) == Status.InvalidHandle, "double free");
        Check(Native.rc_event_free(ref copy) == Status.InvalidHandle, "free of a copy");
        c.Dispose();
        c.Dispose(); // a second Dispose is a no-op
        try { c.Poll(); Check(false, "Poll after Dispose throws"); }
        catch (ObjectDisposedException) { passed++; }
        Console.WriteLine("misuse: ok");
    }

    static IntPtr GetHandle(RoomcastClient c)
    {
        return (IntPtr)typeof(RoomcastClient).GetField("handle", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance).GetValue(c);
    }

    // Failover through the binding: a relay of its own (relay.sh) is SIGKILLed and started again
    // on the same data folder and port; the client (ReconnectForMs) reconnects to it and resumes
    // its room (nothing missed), and its requests work on the new connection.
    static void Failover()
    {
        string relay = Environment.GetEnvironmentVariable("RC_RELAY");
        string dir = Environment.GetEnvironmentVariable("RC_FO_DIR") + "-cs";
        string[] addrs = Run(relay, "start " + dir).Split(' ');
        string quic = addrs[0];
        var env = new Dictionary<string, string> { { "RC_DATA", dir + "/data" }, { "RC_SERVER", quic }, { "RC_ADMIN", addrs[1] } };
        Helper("room cs-failover", env);
        var options = new RoomcastOptions { Server = quic, CaPem = File.ReadAllText(dir + "/data/ca.pem"), Token = Helper("token gail", env) };
        Check(options.ReconnectForMs == 0, "failover is off by default");
        options.ReconnectForMs = 60000;
        using (var c = new RoomcastClient(options))
        {
            Expect(c, EventKind.Connected);
            Reply(c, c.Join("cs-failover"), Status.Ok);
            Run(relay, "kill " + dir);
            Check(Run(relay, "start " + dir + " " + quic).Split(' ')[0] == quic, "restarted on the same port");
            var e = Expect(c, EventKind.Reconnected);
            Check(e.Text == quic, "reconnected to " + e.Text);
            e = Expect(c, EventKind.Resumed);
            Check(e.Room == "cs-failover" && e.Missed == 0, "resumed " + e);
            Check(Reply(c, c.Send("cs-failover", "chat", "back"), Status.Ok).Seq > 0, "a send on the new connection");
            ExpectMessage(c, "cs-failover", "gail", "back");
            c.Close();
            Check(Expect(c, EventKind.Closed).Status == Status.Ok, "closed by the application");
        }
        Run(relay, "kill " + dir);
        Console.WriteLine("failover: ok");
    }

    static int Main()
    {
        server = Environment.GetEnvironmentVariable("RC_SERVER");
        helper = Environment.GetEnvironmentVariable("RC_HELPER");
        caPem = File.ReadAllText(Environment.GetEnvironmentVariable("RC_CA"));
        try
        {
            Misuse();
            Unauthorized();
            Flow();
            Failover();
            Check((ulong)Native.rc_events_outstanding() == 0, "the binding freed every event");
        }
        catch (Exception e)
        {
            Console.Error.WriteLine(e);
            return 1;
        }
        Console.WriteLine("FlowTest.cs: " + passed + " passed, 0 failed");
        return 0;
    }
}
