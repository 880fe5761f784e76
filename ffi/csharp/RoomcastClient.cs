// RoomcastClient.cs: the C# binding of roomcast's C ABI (roomcast.h), for Unity and any .NET /
// Mono program. Hand-written over the header: plain P/Invoke with blittable structs (IntPtr,
// integers, bytes), so it needs neither `unsafe` code nor custom marshalers, and it works the
// same under Mono, .NET and IL2CPP. It never passes a delegate to native code: nothing calls
// back into managed code, on any thread. Every struct size is checked against the library's at
// the first use, so a binding that drifted from the header fails loudly instead of reading
// garbage.
//
// Use: one RoomcastClient per connection; call Poll() each frame (Update) on the thread that
// owns it; requests (Join, Send, ...) return a request id at once and their answer arrives as
// an Event of kind Reply with that RequestId. Dispose() when done.
using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Text;

namespace Roomcast
{
    /// <summary>What a call or a reply returned (rc_status).</summary>
    public enum Status : int
    {
        Ok = 0, Empty = 1,
        BadRequest = 100, Unauthorized = 101, Forbidden = 102, RateLimited = 103, TooLarge = 104,
        RoomNotFound = 105, RoomExists = 106, NotInRoom = 107, Banned = 108, Muted = 109,
        TooManyRooms = 110, AttrLimit = 111, AttrNotOwner = 112, AttrNotFound = 113,
        BatchTooLarge = 114, MessageNotFound = 115, RecallForbidden = 116, Shed = 117,
        Unavailable = 118, Internal = 119,
        InvalidArgument = 200, InvalidUtf8 = 201, InvalidHandle = 202, Closed = 203, Busy = 204,
        Timeout = 205, Connect = 206, Tls = 207, Protocol = 208, Panic = 209,
    }

    /// <summary>What an event is (rc_event_kind).</summary>
    public enum EventKind : uint
    {
        None = 0, Connected = 1, Reply = 2, Message = 3, Gap = 4, RoomDestroyed = 5, Kicked = 6,
        Resumed = 7, Muted = 8, Unmuted = 9, MuteAll = 10, MuteAllLifted = 11, Banned = 12,
        Unbanned = 13, MemberJoined = 14, MemberLeft = 15, MemberCount = 16, Recalled = 17,
        AttributeChanged = 18, AttributeRemoved = 19, Closed = 20, Reconnected = 21,
        ResumeFailed = 22,
    }

    /// <summary>Which request a reply answers (rc_request_kind).</summary>
    public enum RequestKind : uint
    {
        None = 0, Join = 1, Leave = 2, Send = 3, RoomInfo = 4, SetAttributes = 5,
        DeleteAttributes = 6, GetAttributes = 7, Recall = 8, History = 9, Ping = 10,
    }

    /// <summary>The class the relay gave a message.</summary>
    public enum MessageClass : uint { Protected = 0, Normal = 1, Low = 2 }

    /// <summary>Why a room was destroyed.</summary>
    public enum DestroyReason : uint { Manual = 0, Idle = 1, Lifetime = 2, Scheduled = 3 }

    /// <summary>Why this client was removed from a room.</summary>
    public enum KickReason : uint { Banned = 0, OtherDevice = 1, SingleRoom = 2, Offline = 3 }

    /// <summary>A call refused synchronously (bad argument, closed client, too many requests).</summary>
    public class RoomcastException : Exception
    {
        /// <summary>The status the library returned.</summary>
        public readonly Status Status;
        public RoomcastException(Status status, string message) : base(status + ": " + message) { Status = status; }
    }

    /// <summary>A room message.</summary>
    public sealed class Message
    {
        public string Room; public ulong Seq; public ulong TsMs; public string From; public string Type;
        /// <summary>The payload as sent.</summary>
        public byte[] Body;
        public MessageClass Class;
        /// <summary>It came as a QUIC datagram (the low-priority lane).</summary>
        public bool Datagram;
        /// <summary>History only: recalled (the body is empty).</summary>
        public bool Recalled;
        /// <summary>The body as UTF-8 text.</summary>
        public string Text { get { return Encoding.UTF8.GetString(Body); } }
    }

    /// <summary>A room attribute.</summary>
    public sealed class Attribute
    {
        public string Key; public string Value; public string Owner; public bool AutoDelete; public ulong SetMs;
    }

    /// <summary>One key's outcome in a set or delete attributes reply.</summary>
    public sealed class KeyResult { public string Key; public Status Status; public string Text; }

    /// <summary>Room info (with up to 20 members).</summary>
    public sealed class RoomInfo
    {
        public string Id; public string Name; public ulong Epoch; public ulong CreatedMs;
        public ulong MemberCount; public string[] Members; public bool MuteAll;
    }

    /// <summary>An event: the managed copy of an rc_event (see roomcast.h for which kind sets
    /// which field). It owns no native memory.</summary>
    public sealed class Event
    {
        public EventKind Kind; public Status Status; public ulong RequestId; public RequestKind RequestKind;
        public string Text; public string Room; public string User; public ulong ConnId;
        public Message Message; public ulong Low; public ulong Normal; public uint Reason;
        public uint CloseCode; public ulong Seq; public ulong TsMs; public ulong LastSeq;
        public ulong Missed; public ulong Count; public ulong UntilMs; public string[] Users;
        public ulong Version; public Attribute Attribute; public RoomInfo Info; public bool Muted;
        public Message[] Messages; public Attribute[] Attributes; public KeyResult[] Results;
        public override string ToString()
        {
            return Kind + (Room != "" ? " " + Room : "") + (Kind == EventKind.Reply ? " #" + RequestId + " " + Status : "")
                + (Text != "" ? ": " + Text : "");
        }
    }

    /// <summary>How to reach and authenticate to a server.</summary>
    public sealed class RoomcastOptions
    {
        /// <summary>"host:port" (several: comma-separated, tried in order).</summary>
        public string Server;
        /// <summary>The certificate name to check; null: the host, or "localhost" for an IP.</summary>
        public string ServerName;
        /// <summary>PEM of the CA to trust; null: the system's roots.</summary>
        public string CaPem;
        /// <summary>The client token.</summary>
        public string Token;
        public bool Datagrams = true;
        /// <summary>Room events buffered (0: 8192); see rc_config.event_queue.</summary>
        public uint EventQueue;
        /// <summary>Requests in flight before Busy (0: 256).</summary>
        public uint MaxRequests;
        public uint ConnectTimeoutMs;
        public uint RequestTimeoutMs;
        /// <summary>Failover: how long to keep reconnecting to the addresses of Server after the
        /// connection died (0: never, the default); see rc_config.reconnect_for_ms. Then comes
        /// Reconnected (Text: the relay's address), and per room Resumed (Missed, LastSeq) or
        /// ResumeFailed (Status, Text).</summary>
        public uint ReconnectForMs;
    }

    /// <summary>One roomcast connection. Not thread-safe for polling: poll from one thread.</summary>
    public sealed class RoomcastClient : IDisposable
    {
        IntPtr handle;
        bool closedForGood;

        /// <summary>Starts connecting and returns at once; the first event is Connected, or
        /// Closed with why connecting failed.</summary>
        public RoomcastClient(RoomcastOptions options)
        {
            Native.CheckLayout();
            var strings = new List<IntPtr>();
            try
            {
                Native.RcConfig cfg;
                Check(Native.rc_config_init(out cfg));
                cfg.Server = Native.Utf8(options.Server, strings);
                cfg.ServerName = Native.Utf8(options.ServerName, strings);
                cfg.CaPem = Native.Utf8(options.CaPem, strings);
                cfg.Token = Native.Utf8(options.Token, strings);
                cfg.Datagrams = (byte)(options.Datagrams ? 1 : 0);
                cfg.EventQueue = options.EventQueue;
                cfg.MaxRequests = options.MaxRequests;
                cfg.ConnectTimeoutMs = options.ConnectTimeoutMs;
                cfg.RequestTimeoutMs = options.RequestTimeoutMs;
                cfg.ReconnectForMs = options.ReconnectForMs;
                Check(Native.rc_client_open(ref cfg, out handle));
            }
            finally
            {
                foreach (var p in strings) Marshal.FreeHGlobal(p);
            }
        }

        ~RoomcastClient() { Free(); }

        /// <summary>True once the Closed event was taken: no more events will come.</summary>
        public bool IsClosed { get { return closedForGood; } }

        /// <summary>The next event, or null if there is none now (never blocks).</summary>
        public Event Poll() { return Take(Native.rc_client_poll(Live(), out ev), ref ev); }

        /// <summary>The next event, waiting up to timeoutMs; null if none came. Not for a frame loop.</summary>
        public Event Wait(int timeoutMs) { return Take(Native.rc_client_wait(Live(), out ev, (uint)Math.Max(0, timeoutMs)), ref ev); }

        Native.RcEvent ev;

        Event Take(Status s, ref Native.RcEvent raw)
        {
            if (s == Status.Empty) return null;
            if (s == Status.Closed) { closedForGood = true; return null; }
            Check(s);
            try
            {
                var e = Native.ToManaged(ref raw);
                if (e.Kind == EventKind.Closed) closedForGood = true;
                return e;
            }
            finally
            {
                Native.rc_event_free(ref raw);
            }
        }

        /// <summary>Joins a room; history: -1 none, 0 the relay's default, up to 50. Returns the request id.</summary>
        public ulong Join(string room, int history = -1) { ulong id; Check(Native.rc_client_join(Live(), Native.Z(room), history, out id)); return id; }

        /// <summary>Leaves a room.</summary>
        public ulong Leave(string room) { ulong id; Check(Native.rc_client_leave(Live(), Native.Z(room), out id)); return id; }

        /// <summary>Sends bytes; low: the low-priority class (datagrams, shed first).</summary>
        public ulong Send(string room, string type, byte[] body, bool low = false)
        {
            ulong id;
            body = body ?? new byte[0];
            Check(Native.rc_client_send(Live(), Native.Z(room), Native.Z(type), body, (UIntPtr)body.Length, (byte)(low ? 1 : 0), out id));
            return id;
        }

        /// <summary>Sends text as UTF-8.</summary>
        public ulong Send(string room, string type, string text, bool low = false) { return Send(room, type, Encoding.UTF8.GetBytes(text ?? ""), low); }

        /// <summary>Asks for a room's info.</summary>
        public ulong RoomInfo(string room) { ulong id; Check(Native.rc_client_room_info(Live(), Native.Z(room), out id)); return id; }

        /// <summary>Sets up to 10 attributes.</summary>
        public ulong SetAttributes(string room, IDictionary<string, string> entries, bool autoDelete = false, bool force = false)
        {
            var strings = new List<IntPtr>();
            try
            {
                var kv = new Native.RcKeyValue[entries.Count];
                int i = 0;
                foreach (var e in entries)
                {
                    kv[i].Key = Native.Utf8(e.Key, strings);
                    kv[i].Value = Native.Utf8(e.Value, strings);
                    i++;
                }
                ulong id;
                Check(Native.rc_client_set_attributes(Live(), Native.Z(room), kv, (UIntPtr)kv.Length, (byte)(autoDelete ? 1 : 0), (byte)(force ? 1 : 0), out id));
                return id;
            }
            finally { foreach (var p in strings) Marshal.FreeHGlobal(p); }
        }

        /// <summary>Deletes up to 10 attributes.</summary>
        public ulong DeleteAttributes(string room, string[] keys, bool force = false)
        {
            var strings = new List<IntPtr>();
            try
            {
                var ptrs = Native.Utf8All(keys, strings);
                ulong id;
                Check(Native.rc_client_delete_attributes(Live(), Native.Z(room), ptrs, (UIntPtr)ptrs.Length, (byte)(force ? 1 : 0), out id));
                return id;
            }
            finally { foreach (var p in strings) Marshal.FreeHGlobal(p); }
        }

        /// <summary>Reads attributes (all when no key is given).</summary>
        public ulong GetAttributes(string room, params string[] keys)
        {
            var strings = new List<IntPtr>();
            try
            {
                var ptrs = Native.Utf8All(keys, strings);
                ulong id;
                Check(Native.rc_client_get_attributes(Live(), Native.Z(room), ptrs, (UIntPtr)ptrs.Length, out id));
                return id;
            }
            finally { foreach (var p in strings) Marshal.FreeHGlobal(p); }
        }

        /// <summary>Recalls one of this user's messages.</summary>
        public ulong Recall(string room, ulong seq) { ulong id; Check(Native.rc_client_recall(Live(), Native.Z(room), seq, out id)); return id; }

        /// <summary>A page of history before beforeSeq (0: the newest), oldest first.</summary>
        public ulong History(string room, ulong beforeSeq, uint limit) { ulong id; Check(Native.rc_client_history(Live(), Native.Z(room), beforeSeq, limit, out id)); return id; }

        /// <summary>A round trip.</summary>
        public ulong Ping() { ulong id; Check(Native.rc_client_ping(Live(), out id)); return id; }

        /// <summary>Closes the connection without waiting; a Closed event follows as the last.</summary>
        public void Close() { Check(Native.rc_client_close(Live())); }

        /// <summary>Closes (if open) and releases the client; blocks at most about a second.</summary>
        public void Dispose()
        {
            Free();
            GC.SuppressFinalize(this);
        }

        void Free()
        {
            if (handle != IntPtr.Zero)
            {
                Native.rc_client_free(handle);
                handle = IntPtr.Zero;
            }
        }

        IntPtr Live()
        {
            if (handle == IntPtr.Zero) throw new ObjectDisposedException("RoomcastClient");
            return handle;
        }

        static void Check(Status s)
        {
            if (s != Status.Ok) throw new RoomcastException(s, Native.LastError());
        }
    }

    /// <summary>The raw ABI: structs laid out as roomcast.h declares them (bool as byte).</summary>
    internal static class Native
    {
#if UNITY_IOS && !UNITY_EDITOR
        const string Lib = "__Internal"; // statically linked libroomcast_ffi.a
#else
        const string Lib = "roomcast_ffi"; // libroomcast_ffi.so / .dylib / roomcast_ffi.dll
#endif
        internal const uint AbiVersion = 1;

        [StructLayout(LayoutKind.Sequential)] internal struct RcStr { public IntPtr Ptr; public UIntPtr Len; }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcMessage
        {
            public RcStr Room; public ulong Seq; public ulong TsMs; public RcStr From; public RcStr Type;
            public RcStr Body; public uint Class; public byte Datagram; public byte Recalled;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcAttribute { public RcStr Key; public RcStr Value; public RcStr Owner; public byte AutoDelete; public ulong SetMs; }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcKeyResult { public RcStr Key; public Status Status; public RcStr Text; }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcRoomInfo
        {
            public RcStr Id; public RcStr Name; public ulong Epoch; public ulong CreatedMs; public ulong MemberCount;
            public IntPtr Members; public UIntPtr MembersLen; public byte MuteAll;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcEvent
        {
            public EventKind Kind; public Status Status; public ulong RequestId; public RequestKind RequestKind;
            public RcStr Text; public RcStr Room; public RcStr User; public ulong ConnId; public RcMessage Message;
            public ulong Low; public ulong Normal; public uint Reason; public uint CloseCode; public ulong Seq;
            public ulong TsMs; public ulong LastSeq; public ulong Missed; public ulong Count; public ulong UntilMs;
            public IntPtr Users; public UIntPtr UsersLen; public ulong Version; public RcAttribute Attribute;
            public RcRoomInfo Info; public byte Muted; public IntPtr Messages; public UIntPtr MessagesLen;
            public IntPtr Attributes; public UIntPtr AttributesLen; public IntPtr Results; public UIntPtr ResultsLen;
            public ulong Handle;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RcConfig
        {
            public uint Size; public IntPtr Server; public IntPtr ServerName; public IntPtr CaPem; public IntPtr Token;
            public byte Datagrams; public uint EventQueue; public uint MaxRequests; public uint ConnectTimeoutMs;
            public uint RequestTimeoutMs; public uint ReconnectForMs;
        }

        [StructLayout(LayoutKind.Sequential)] internal struct RcKeyValue { public IntPtr Key; public IntPtr Value; }

        [DllImport(Lib)] internal static extern uint rc_abi_version();
        [DllImport(Lib)] internal static extern UIntPtr rc_event_size();
        [DllImport(Lib)] internal static extern UIntPtr rc_config_size();
        [DllImport(Lib)] internal static extern IntPtr rc_last_error_message();
        [DllImport(Lib)] internal static extern IntPtr rc_status_name(int status);
        [DllImport(Lib)] internal static extern UIntPtr rc_events_outstanding();
        [DllImport(Lib)] internal static extern Status rc_config_init(out RcConfig config);
        [DllImport(Lib)] internal static extern Status rc_client_open(ref RcConfig config, out IntPtr client);
        [DllImport(Lib)] internal static extern Status rc_client_poll(IntPtr client, out RcEvent ev);
        [DllImport(Lib)] internal static extern Status rc_client_wait(IntPtr client, out RcEvent ev, uint timeoutMs);
        [DllImport(Lib)] internal static extern Status rc_event_free(ref RcEvent ev);
        [DllImport(Lib)] internal static extern Status rc_client_join(IntPtr client, byte[] room, int history, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_leave(IntPtr client, byte[] room, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_send(IntPtr client, byte[] room, byte[] type, byte[] body, UIntPtr bodyLen, byte low, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_room_info(IntPtr client, byte[] room, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_set_attributes(IntPtr client, byte[] room, RcKeyValue[] entries, UIntPtr count, byte autoDelete, byte force, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_delete_attributes(IntPtr client, byte[] room, IntPtr[] keys, UIntPtr count, byte force, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_get_attributes(IntPtr client, byte[] room, IntPtr[] keys, UIntPtr count, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_recall(IntPtr client, byte[] room, ulong seq, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_history(IntPtr client, byte[] room, ulong beforeSeq, uint limit, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_ping(IntPtr client, out ulong id);
        [DllImport(Lib)] internal static extern Status rc_client_close(IntPtr client);
        [DllImport(Lib)] internal static extern Status rc_client_free(IntPtr client);

        static bool layoutChecked;

        /// <summary>Fails loudly if this file and the native library disagree.</summary>
        internal static void CheckLayout()
        {
            if (layoutChecked) return;
            if (rc_abi_version() != AbiVersion)
                throw new InvalidOperationException("roomcast: native ABI " + rc_abi_version() + ", binding " + AbiVersion);
            if ((ulong)rc_event_size() != (ulong)Marshal.SizeOf(typeof(RcEvent)) || (ulong)rc_config_size() != (ulong)Marshal.SizeOf(typeof(RcConfig)))
                throw new InvalidOperationException("roomcast: RoomcastClient.cs does not match the native library's struct layout");
            layoutChecked = true;
        }

        internal static string LastError() { return Cstr(rc_last_error_message()); }

        /// <summary>A 0-terminated UTF-8 copy of s (null stays null) for a by-value argument.</summary>
        internal static byte[] Z(string s)
        {
            if (s == null) return null;
            var b = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
            return b;
        }

        /// <summary>An unmanaged 0-terminated UTF-8 copy of s, freed by the caller via `owned`.</summary>
        internal static IntPtr Utf8(string s, List<IntPtr> owned)
        {
            if (s == null) return IntPtr.Zero;
            var b = Z(s);
            var p = Marshal.AllocHGlobal(b.Length);
            Marshal.Copy(b, 0, p, b.Length);
            owned.Add(p);
            return p;
        }

        internal static IntPtr[] Utf8All(string[] items, List<IntPtr> owned)
        {
            items = items ?? new string[0];
            var ptrs = new IntPtr[items.Length];
            for (int i = 0; i < items.Length; i++) ptrs[i] = Utf8(items[i], owned);
            return ptrs;
        }

        static string Cstr(IntPtr p)
        {
            if (p == IntPtr.Zero) return "";
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            var b = new byte[n];
            Marshal.Copy(p, b, 0, n);
            return Encoding.UTF8.GetString(b);
        }

        static byte[] Bytes(RcStr s)
        {
            int n = checked((int)(ulong)s.Len);
            var b = new byte[n];
            if (n > 0) Marshal.Copy(s.Ptr, b, 0, n);
            return b;
        }

        static string Str(RcStr s) { return Encoding.UTF8.GetString(Bytes(s)); }

        static T[] Array<T, R>(IntPtr p, UIntPtr len, Func<R, T> convert) where R : struct
        {
            int n = checked((int)(ulong)len);
            var result = new T[n];
            int size = Marshal.SizeOf(typeof(R));
            for (int i = 0; i < n; i++) result[i] = convert((R)Marshal.PtrToStructure(IntPtr.Add(p, i * size), typeof(R)));
            return result;
        }

        static Message ToMessage(RcMessage m)
        {
            return new Message
            {
                Room = Str(m.Room), Seq = m.Seq, TsMs = m.TsMs, From = Str(m.From), Type = Str(m.Type),
                Body = Bytes(m.Body), Class = (MessageClass)m.Class, Datagram = m.Datagram != 0, Recalled = m.Recalled != 0,
            };
        }

        static Attribute ToAttribute(RcAttribute a)
        {
            return new Attribute { Key = Str(a.Key), Value = Str(a.Value), Owner = Str(a.Owner), AutoDelete = a.AutoDelete != 0, SetMs = a.SetMs };
        }

        internal static Event ToManaged(ref RcEvent r)
        {
            return new Event
            {
                Kind = r.Kind, Status = r.Status, RequestId = r.RequestId, RequestKind = r.RequestKind,
                Text = Str(r.Text), Room = Str(r.Room), User = Str(r.User), ConnId = r.ConnId,
                Message = r.Kind == EventKind.Message ? ToMessage(r.Message) : null,
                Low = r.Low, Normal = r.Normal, Reason = r.Reason, CloseCode = r.CloseCode, Seq = r.Seq,
                TsMs = r.TsMs, LastSeq = r.LastSeq, Missed = r.Missed, Count = r.Count, UntilMs = r.UntilMs,
                Users = Array<string, RcStr>(r.Users, r.UsersLen, Str),
                Version = r.Version, Attribute = ToAttribute(r.Attribute),
                Info = new RoomInfo
                {
                    Id = Str(r.Info.Id), Name = Str(r.Info.Name), Epoch = r.Info.Epoch, CreatedMs = r.Info.CreatedMs,
                    MemberCount = r.Info.MemberCount, Members = Array<string, RcStr>(r.Info.Members, r.Info.MembersLen, Str),
                    MuteAll = r.Info.MuteAll != 0,
                },
                Muted = r.Muted != 0,
                Messages = Array<Message, RcMessage>(r.Messages, r.MessagesLen, ToMessage),
                Attributes = Array<Attribute, RcAttribute>(r.Attributes, r.AttributesLen, ToAttribute),
                Results = Array<KeyResult, RcKeyResult>(r.Results, r.ResultsLen, k => new KeyResult { Key = Str(k.Key), Status = k.Status, Text = Str(k.Text) }),
            };
        }
    }
}
